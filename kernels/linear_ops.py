"""The quantized linear layers' Triton paths, composed from the kernels and registered as PyTorch
custom ops (`torch.library`) so a model of `QuantLinear`s compiles without graph breaks.

- `dq::w4a4_linear`: DeltaQuant (or SVDQuant / RTN) W4A4, weights and activations each in `int4_pow2`
  (power-of-two group scales) or `int4_row` (one scale per output channel / token):
      quantizer (dq_kernels.delta_quantize)   X → core tokens, E4M3 delta carriers, (X/λ)·L₂ᵀ
      weight expansion (expand_int4)          packed int4 → E4M3 carriers, at rest 4-bit
      core tokens (fp8_quantize)              cube means → FP8, one power-of-two scale per 64 channels,
                                              handed on as BF16 carriers (exact)
      core GEMM (cuBLAS BF16, fp32 out)       core tokens × W, one row per cube
      delta GEMM (scaled_gemm)                + core term, low-rank up-projection, bias, in the epilogue
- `dq::w8a8_linear`: INT8 weights per channel × INT8 activations per token (the 6Bit INT8 route).
- `dq::w4a16_linear`: 4-bit weights (`int4`, `int4_pow2`, `int4_row`) with 16-bit activations, for
  layers whose inputs are few or outlier-heavy (the text tokens' cross-attention K/V, Wan's time and
  text embedders): the weight expanded to BF16 terms on the fly, BF16 GEMMs with fp32 output.

Each op's math is exactly QuantLinear's reference forward (dq_cli/quant/linear.py) up to float
summation order; tests hold them to that.
"""

from __future__ import annotations

import torch

from .bf16_terms import bf16_terms, mm_fp32
from .delta_quantize import delta_quantize
from .expand_int4 import expand_int4, expand_int4_both
from .fp8_quantize import fp8_group_carriers
from .int4 import dequantize_int4, unpack_int4
from .int8_quantize import quantize_int8_tokens
from .scaled_gemm import scaled_gemm
from .smoothing import inverse_smooth

__all__ = ["w4a4_linear", "w4a16_linear", "w8a8_linear"]

CORE_GROUP = 64
# Rows of `dq::w4a16_linear` go through in chunks whose fp32 partial product holds at most this many
# elements (256 MB): on video tokens (Wan 2.2 TI2V's time_proj sees every token, 27,280 × 18,432 at
# 720p) the whole fp32 product and its two terms raised the forward's peak by 1.4 GiB.
W4A16_CHUNK_ELEMENTS = 1 << 26


@torch.library.custom_op("dq::w4a4_linear", mutates_args=())
def w4a4_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, smooth: torch.Tensor | None,
                lora_down: torch.Tensor | None, lora_up: torch.Tensor | None, bias: torch.Tensor | None,
                batch: int, grid: list[int], cube: list[int], act_format: str = "int4_pow2") -> torch.Tensor:
    """x [M, K] (K padded to 64 for `int4_pow2` or cubes; M = batch·T·H·W when `cube` is non-empty)
    → y [M, N] in x's dtype. `cube` empty: no core tokens (the tokens themselves in `act_format`).
    The weight's format is read from its scales: [N, K/64] `int4_pow2`, [N, 1] `int4_row`."""
    # The low-rank input (X/λ)·L₂ᵀ = X·(L₂/λ)ᵀ by cuBLAS: a skinny GEMM that streams X once. Fused
    # into the quantizer it cost ~1 ms at 32,760×5,120 on an H100 (tools/kernel_probe.py). In fp32, in
    # token order, as the GEMM's epilogue reads it: on BF16 input it ran 0.27–0.87 ms slower per call at
    # Wan A14B 480p shapes on an H200 (tools/probe_epilogue_parts.py,
    # docs/measurements/probe_epilogue_parts_h200.txt). Not rounded to BF16 in between as the reference
    # does (~2**-9 of the branch, within the tests' tolerance): that took a pass of its own.
    down = None
    if lora_down is not None:
        # (bf16 · fp32 promotes to fp32: the same products as lora_down.float() · 1/λ, one launch fewer)
        factor = lora_down * inverse_smooth(smooth) if smooth is not None else lora_down.float()
        down = mm_fp32(x, factor) if lora_down.dtype == torch.bfloat16 else x.to(lora_down.dtype) @ factor.T
    acts = delta_quantize(x, smooth, None, batch, tuple(grid) if cube else None, tuple(cube) if cube else None,
                          act_format)
    core_out = None
    if cube:
        # The FP8 core tokens' products exactly on BF16 tensor cores (fp8_quantize): a GEMM on the
        # E4M3 values needs a scale per 64 columns inside its K loop, which ran the 2,048 core rows
        # of 4x1x4 cubes at Wan A14B 480p far below the FP8 rate (README, "Kernels").
        w, w16, w_scale = expand_int4_both(qweight, scales)
        core_out = mm_fp32(fp8_group_carriers(acts.core, CORE_GROUP), w16)  # the GEMM applies w_scale
    else:
        w, w_scale = expand_int4(qweight, scales)
    return scaled_gemm(acts.delta, w, acts.scale, w_scale, core=core_out, cube_of_row=acts.cube_of_row,
                       row_token=acts.row_token, down=down, up=lora_up, bias=bias, out_dtype=x.dtype)


@w4a4_linear.register_fake
def _(x, qweight, scales, smooth, lora_down, lora_up, bias, batch, grid, cube, act_format="int4_pow2"):
    return x.new_empty(x.shape[0], qweight.shape[0])


@torch.library.custom_op("dq::w8a8_linear", mutates_args=())
def w8a8_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, smooth: torch.Tensor | None,
                bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] → y [M, N]: per-token INT8 activations × per-channel INT8 weights, int32 accumulation."""
    q, s = quantize_int8_tokens(x, smooth)
    return scaled_gemm(q, qweight, s, scales.reshape(-1).float(), bias=bias, out_dtype=x.dtype)


@w8a8_linear.register_fake
def _(x, qweight, scales, smooth, bias):
    return x.new_empty(x.shape[0], qweight.shape[0])


@torch.library.custom_op("dq::w4a16_linear", mutates_args=())
def w4a16_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 weight_format: str) -> torch.Tensor:
    """x [M, K] → y [M, N] in x's dtype: x · Ŵᵀ with Ŵ the 4-bit weight, packed at rest, the product
    the reference's up to fp32 summation order and ~2**-16 relative per term:
    - `int4_pow2` / `int4_row`: the E4M3 carriers of `expand_int4` (exact in BF16), scaled per row after;
    - `int4` (free bf16 group scales): the dequantized weight as BF16 hi + lo, two GEMMs;
    - x in BF16 is exact; another dtype is split into BF16 hi + lo as well.
    Rows go in chunks (W4A16_CHUNK_ELEMENTS): a row's products are the same, only the GEMM's fp32
    summation order may differ with the chunk's size."""
    if weight_format == "int4":
        w = dequantize_int4(unpack_int4(qweight), scales, qweight.shape[1] * 2 // scales.shape[1])
        w_terms, w_scale = bf16_terms(w), None
    else:
        carrier, w_scale = expand_int4(qweight, scales)
        w_terms = [carrier]
    x_terms = bf16_terms(x)
    out = x.new_empty(x.shape[0], qweight.shape[0])
    rows = max(1, W4A16_CHUNK_ELEMENTS // qweight.shape[0])
    for i in range(0, x.shape[0], rows):
        y = sum(mm_fp32(a[i:i + rows], b) for a in x_terms for b in w_terms)
        if w_scale is not None:
            y *= w_scale[None, :]
        if bias is not None:
            y += bias.float()
        out[i:i + rows] = y
    return out


@w4a16_linear.register_fake
def _(x, qweight, scales, bias, weight_format):
    return x.new_empty(x.shape[0], qweight.shape[0])

