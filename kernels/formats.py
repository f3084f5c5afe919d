"""Formats by name, as `QuantLinear` stores and applies them: weights packed once into named tensors,
activations quantized on the fly. The numerics live in `dq_kernels`; this module only chooses
the layout (which tensors, padded K) for each format name a recipe can use."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dq_kernels.fp8 import dequantize_fp8, quantize_fp8
from dq_kernels.int4 import dequantize_int4, pack_int4, quantize_int4, unpack_int4
from dq_kernels.int8 import dequantize_int8, quantize_int8_rowwise
from dq_kernels.nvfp4 import dequantize_nvfp4, fake_quantize_nvfp4, pack_fp4, quantize_nvfp4, unpack_fp4

NVFP4_BLOCK = 16

# The INT4 family differs only in its scales: "int4" free bf16 scales per group, "int4_pow2"
# power-of-two group scales (exact in an E4M3 carrier, what the Hopper kernel multiplies),
# "int4_row" one scale per row (per token / per output channel).
INT4_FORMATS = ("int4", "int4_pow2", "int4_row")
# The two whose values are exact on Hopper's 8-bit tensor cores with one scale per row applied after
# the K loop: what dq::w4a4_linear runs (dq_kernels.expand_int4, delta_quantize).
KERNEL_INT4_FORMATS = ("int4_pow2", "int4_row")

# Bits per stored weight element (values only; scales are counted from the tensors themselves).
WEIGHT_BITS = {"bf16": 16, "int8": 8, "fp8": 8, "nvfp4": 4, **{f: 4 for f in INT4_FORMATS}}
ACTIVATION_BITS = {"none": 16, "int8": 8, "fp8": 8, "nvfp4": 4, **{f: 4 for f in INT4_FORMATS}}


def k_multiple(fmt: str, group_size: int) -> int:
    """K must be a multiple of this for the format (callers pad with zeros)."""
    return {"int4": group_size, "int4_pow2": group_size, "int4_row": 2, "nvfp4": NVFP4_BLOCK}.get(fmt, 1)


def quantize_int4_format(x: torch.Tensor, fmt: str, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and scales of one INT4 format by name (the one place that says what each name means)."""
    if fmt == "int4_row":
        return quantize_int4(x, x.shape[-1], reciprocal=True)  # as the Hopper kernel rounds (dq_kernels.int4)
    return quantize_int4(x, group_size, pow2_scales=fmt == "int4_pow2")


def _dequantize_int4_family(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    # The group size is implied by the shapes (int4_row has one group spanning K).
    return dequantize_int4(codes, scales, codes.shape[-1] // scales.shape[-1])


def pad_k(x: torch.Tensor, multiple: int) -> torch.Tensor:
    extra = -x.shape[-1] % multiple
    return F.pad(x, (0, extra)) if extra else x


# ---- weights -----------------------------------------------------------------------------------
def pack_weight(w: torch.Tensor, fmt: str, group_size: int) -> dict[str, torch.Tensor]:
    """Quantize a weight [N, K] (K already padded) into the tensors a checkpoint stores."""
    w = w.float()
    if fmt == "bf16":
        return {"weight": w.to(torch.bfloat16)}
    if fmt == "int8":
        q, s = quantize_int8_rowwise(w)
        return {"qweight": q, "scales": s}
    if fmt == "fp8":
        q, s = quantize_fp8(w)
        return {"qweight": q, "scales": s}
    if fmt in INT4_FORMATS:
        q, s = quantize_int4_format(w, fmt, group_size)
        return {"qweight": pack_int4(q), "scales": s}
    if fmt == "nvfp4":
        q, s, ts = quantize_nvfp4(w)
        return {"qweight": pack_fp4(q), "block_scales": s, "tensor_scale": ts}
    raise ValueError(f"unknown weight format {fmt!r}")


def unpack_weight(t: dict[str, torch.Tensor], fmt: str, group_size: int) -> torch.Tensor:
    """The fp32 weight [N, K_padded] that the packed tensors represent."""
    if fmt == "bf16":
        return t["weight"].float()
    if fmt == "int8":
        return dequantize_int8(t["qweight"], t["scales"])
    if fmt == "fp8":
        return dequantize_fp8(t["qweight"], t["scales"])
    if fmt in INT4_FORMATS:
        return _dequantize_int4_family(unpack_int4(t["qweight"]), t["scales"])
    if fmt == "nvfp4":
        return dequantize_nvfp4(unpack_fp4(t["qweight"]), t["block_scales"], t["tensor_scale"])
    raise ValueError(f"unknown weight format {fmt!r}")


# ---- activations -------------------------------------------------------------------------------
def fake_quant(x: torch.Tensor, fmt: str, group_size: int, amax: torch.Tensor | None = None) -> torch.Tensor:
    """Round activations [tokens, K_padded] to the format's grid (dynamic scales), in fp32. Every
    scale is per token or per group of a token, except NVFP4's per-tensor one: `amax` gives the
    whole tensor's max |x| when x is one shard of it (sequence parallelism)."""
    x = x.float()
    if fmt == "none":
        return x
    if fmt == "int8":
        return dequantize_int8(*quantize_int8_rowwise(x))
    if fmt == "fp8":
        return dequantize_fp8(*quantize_fp8(x))
    if fmt in INT4_FORMATS:
        return _dequantize_int4_family(*quantize_int4_format(x, fmt, group_size))
    if fmt == "nvfp4":
        return fake_quantize_nvfp4(x, amax=amax)
    raise ValueError(f"unknown activation format {fmt!r}")
