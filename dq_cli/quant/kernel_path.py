"""When a `QuantLinear` runs on the Triton kernels (dq_kernels.linear_ops) instead of its
reference math: on CUDA, for the formats the Hopper kernels implement exactly —

- INT4 weights and activations with power-of-two group scales (`int4_pow2`) or one scale per
  output channel / token (`int4_row`), in any pairing (RTN, SmoothQuant, SVDQuant, DeltaQuant with
  FP8 core tokens; in a joint text + video sequence, as CogVideoX's, the video tokens through the
  cubes and the text tokens per token, one call each): `dq::w4a4_linear`;
- `int8` weights and activations: `dq::w8a8_linear`;
- INT4 weights (any of the three scale layouts, round-to-nearest) with 16-bit activations: `dq::w4a16_linear`;
- NVFP4 weights (6Bit-Diffusion) on their NVFP4 / INT8 / 16-bit routes, Hadamard rotation
  included: exact BF16 carriers on cuBLAS (dq_cli/quant/carrier_path.py).

Everything else (free group scales, DeltaQuant's cube route with NVFP4 deltas) keeps the reference path. `DQ_KERNELS=triton` forces the kernels on the CPU (under
TRITON_INTERPRET=1, for tests); `DQ_KERNELS=reference` keeps the reference everywhere.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from dq_cli.quant.activations import video_slice
from dq_cli.quant.carrier_path import carrier_forward
from dq_kernels.formats import INT4_FORMATS, KERNEL_INT4_FORMATS

W4A4_METHODS = ("rtn", "smoothquant", "svdquant", "deltaquant")


def kernel_route(plan) -> str | None:
    """Which kernel path a layer of this plan takes on CUDA — "carrier" (NVFP4), "w8a8", "w4a16" or
    "w4a4" — or None for the reference; `kernel_forward` adds what the forward decides."""
    if plan.weight == "nvfp4":
        return "carrier"
    if plan.hadamard:
        return None  # 6Bit-Diffusion's rotations run on the reference
    if plan.weight == plan.activation == "int8":
        return "w8a8" if plan.method in ("rtn", "smoothquant") else None
    if plan.weight in INT4_FORMATS and plan.activation == "none":
        return "w4a16" if plan.method == "rtn" else None
    if plan.weight in KERNEL_INT4_FORMATS and plan.activation in KERNEL_INT4_FORMATS and plan.method in W4A4_METHODS:
        return "w4a4"
    return None


def plan_on_kernels(plan) -> bool:
    """Whether every call of a layer of this plan runs on the kernels on CUDA: its route, and for
    DeltaQuant FP8 core tokens (the cubes of the forward's video need them)."""
    return kernel_route(plan) is not None and (plan.method != "deltaquant" or plan.core == "fp8")


def wants_kernels(x: torch.Tensor) -> bool:
    choice = os.environ.get("DQ_KERNELS", "auto")
    return choice == "triton" or (choice == "auto" and x.is_cuda)


def kernel_forward(layer, x: torch.Tensor) -> torch.Tensor | None:
    """y [B, S, N] from the kernels, or None where they do not apply. x: [B, S, K]."""
    import dq_kernels.linear_ops  # noqa: F401  (registers torch.ops.dq.*; imports triton)

    plan = layer.plan
    route = kernel_route(plan)
    if route == "carrier":
        return carrier_forward(layer, x)
    if route is None or layer.route is not None or layer.refresh_ratio is not None:
        return None  # 6Bit-Diffusion's per-step routes run on the reference
    if route == "w8a8":
        y = torch.ops.dq.w8a8_linear(x.reshape(-1, x.shape[-1]), layer.qweight, layer.scales, layer.smooth,
                                     layer.bias)
        return y.reshape(*x.shape[:-1], -1)
    if route == "w4a16":
        k = layer.qweight.shape[1] * 2  # packed two codes a byte, K padded
        y = torch.ops.dq.w4a16_linear(_pad_k(x, k).reshape(-1, k), layer.qweight, layer.scales, layer.bias,
                                      plan.weight)
        return y.reshape(*x.shape[:-1], -1)
    if not (plan.method == "deltaquant" and layer.sees_video):
        return _w4a4(layer, x, [], [])
    state = layer.forward_state
    video = video_slice(x, state) if plan.core == "fp8" else None
    if video is None:
        return None  # not this forward's video sequence (e.g. a slice of it): the reference decides
    grid, cube = list(state.grid), list(layer.current_cube())
    if video.start == 0 and video.stop == x.shape[1]:
        return _w4a4(layer, x, grid, cube)
    # A joint sequence (CogVideoX: 226 text tokens, then the video): as in the reference
    # (dq_cli/quant/activations.py), the video tokens go through the cubes and the others are
    # quantized token by token — one call each, joined along the sequence.
    parts = [(x[:, :video.start], [], []), (x[:, video], grid, cube), (x[:, video.stop:], [], [])]
    return torch.cat([_w4a4(layer, part.contiguous(), g, c) for part, g, c in parts if part.shape[1]], dim=1)


def _w4a4(layer, x: torch.Tensor, grid: list[int], cube: list[int]) -> torch.Tensor:
    """dq::w4a4_linear on x [B, S, K]: DeltaQuant's cubes over `grid` (S = its t·h·w tokens), or
    per-token quantization where grid is empty."""
    k = layer.qweight.shape[1] * 2
    y = torch.ops.dq.w4a4_linear(_pad_k(x, k).reshape(-1, k), layer.qweight, layer.scales,
                                 _pad_k(layer.smooth, k, 1.0), _pad_k(layer.lora_down, k), layer.lora_up,
                                 layer.bias, x.shape[0], grid, cube, layer.plan.activation)
    return y.reshape(*x.shape[:-1], -1)


def _pad_k(t: torch.Tensor | None, k: int, value: float = 0.0) -> torch.Tensor | None:
    """t with columns of `value` appended up to the packed weight's K (none: t itself)."""
    pad = k - t.shape[-1] if t is not None else 0
    return F.pad(t, (0, pad), value=value) if pad else t
