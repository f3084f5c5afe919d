"""How a `QuantLinear` rounds its input: plain round-to-nearest per token / group, or DeltaQuant's
cube split on the video tokens of the current forward (the model adapter says where they are)."""

from __future__ import annotations

import torch

from dq_cli.models.base import ForwardState
from dq_kernels.formats import fake_quant
from dq_cli.quant.plan import LayerPlan
from dq_kernels.delta_cubes import split_deltas
from dq_kernels.fp8 import dequantize_fp8, quantize_fp8
from dq_kernels.int4 import dequantize_int4, quantize_int4

CORE_GROUP = 64  # core tokens: FP8 with one scale per 64 channels (the paper's setting)
PAPER_CUBES = ((0.3, (4, 1, 4)), (1.0, (4, 2, 8)))


def cube_at(plan: LayerPlan, progress: float) -> tuple[int, int, int]:
    for until, size in plan.cubes or PAPER_CUBES:
        if progress < until:
            return tuple(size)
    return tuple((plan.cubes or PAPER_CUBES)[-1][1])


def quantize_core(core: torch.Tensor, precision: str) -> torch.Tensor:
    if precision == "bf16":
        return core.to(torch.bfloat16).float()
    if precision == "fp8":
        return dequantize_fp8(*quantize_fp8(core, CORE_GROUP), CORE_GROUP)
    if precision == "int4":
        return dequantize_int4(*quantize_int4(core, CORE_GROUP), CORE_GROUP)
    raise ValueError(f"unknown core precision {precision!r}")


def quantize_input(x: torch.Tensor, plan: LayerPlan, state: ForwardState | None, sees_video: bool) -> torch.Tensor:
    """x [B, S, K] (K padded for the formats) → the rounded activations, fp32, same shape."""
    flat = lambda v: fake_quant(v.reshape(-1, v.shape[-1]), plan.activation, plan.group_size).reshape(v.shape)  # noqa: E731
    video = _video_slice(x, state) if plan.method == "deltaquant" and sees_video else None
    if video is None:
        return flat(x)
    out = flat(x) if (video.start > 0 or video.stop < x.shape[1]) else torch.empty_like(x, dtype=torch.float32)
    core, deltas, ids = split_deltas(x[:, video], state.grid, cube_at(plan, state.progress))
    out[:, video] = quantize_core(core, plan.core)[:, ids] + flat(deltas)
    return out


def _video_slice(x: torch.Tensor, state: ForwardState | None) -> slice | None:
    if state is None or not state.in_forward or x.dim() != 3:
        return None
    t, h, w = state.grid
    video = state.video_tokens
    if t * h * w == 0 or video.stop > x.shape[1]:
        return None
    return video
