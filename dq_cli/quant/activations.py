"""How a `QuantLinear` rounds its input: plain round-to-nearest per token / group, or DeltaQuant's
cube split on the video tokens of the current forward (the model adapter says where they are)."""

from __future__ import annotations

import torch

from dq_cli.models.base import ForwardState
from dq_kernels.formats import fake_quant
from dq_cli.quant.plan import LayerPlan
from dq_cli.quant.sequence import sequence_amax, split_deltas_sharded
from dq_kernels.delta_cubes import split_deltas
from dq_kernels.fp8 import dequantize_fp8, quantize_fp8
from dq_kernels.int4 import dequantize_int4, quantize_int4

# Core tokens: FP8 with one scale per 64 channels (the paper's setting), the scales powers of two
# (dq_kernels.fp8: no loss, and the kernels' core GEMM runs them exactly in BF16).
CORE_GROUP = 64
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
        return dequantize_fp8(*quantize_fp8(core, CORE_GROUP, pow2_scales=True), CORE_GROUP)
    if precision == "int4":
        return dequantize_int4(*quantize_int4(core, CORE_GROUP), CORE_GROUP)
    raise ValueError(f"unknown core precision {precision!r}")


def quantize_input(x: torch.Tensor, plan: LayerPlan, state: ForwardState | None, sees_video: bool,
                   cube: tuple[int, int, int] | None = None) -> torch.Tensor:
    """x [B, S, K] (K padded for the formats) → the rounded activations, fp32, same shape. `cube`:
    DeltaQuant's cube size for this forward (default: from the state's progress).

    Under context parallelism (`state.shard`), x is this process's slice of the sequence and the
    result is that slice of what one process would compute (dq_cli/quant/sequence.py)."""
    shard = state.shard if state is not None else None

    def flat(v: torch.Tensor) -> torch.Tensor:
        v2 = v.reshape(-1, v.shape[-1])
        # NVFP4's per-tensor scale is the only one that is not token-local: the max over all slices.
        amax = sequence_amax(v2, shard) if plan.activation == "nvfp4" else None
        return fake_quant(v2, plan.activation, plan.group_size, amax=amax).reshape(v.shape)

    if cube is None and state is not None:
        cube = cube_at(plan, state.progress)
    if plan.method == "deltaquant" and sees_video and _sharded_video(x, state):
        core, deltas, ids = split_deltas_sharded(x, state.grid, cube, shard)
        return quantize_core(core, plan.core)[:, ids] + flat(deltas)
    video = video_slice(x, state) if plan.method == "deltaquant" and sees_video else None
    if video is None:
        return flat(x)
    out = flat(x) if (video.start > 0 or video.stop < x.shape[1]) else torch.empty_like(x, dtype=torch.float32)
    core, deltas, ids = split_deltas(x[:, video], state.grid, cube)
    out[:, video] = quantize_core(core, plan.core)[:, ids] + flat(deltas)
    return out


def _sharded_video(x: torch.Tensor, state: ForwardState | None) -> bool:
    """x is this process's slice of a sequence of video tokens only (context parallelism)."""
    if state is None or state.shard is None or not state.in_forward or x.dim() != 3 or state.text_tokens:
        return False
    t, h, w = state.grid
    return t * h * w > 0 and state.shard.holds_slice_of(x.shape[1], t * h * w)


def video_slice(x: torch.Tensor, state: ForwardState | None) -> slice | None:
    """Where this forward's video tokens lie in x [B, S, K] (a joint sequence puts text around
    them), or None when x is not that sequence: the reference and the kernel path both ask here."""
    if state is None or not state.in_forward or x.dim() != 3:
        return None
    t, h, w = state.grid
    video = state.video_tokens
    if t * h * w == 0 or video.stop > x.shape[1]:
        return None
    return video
