"""FP8 E4M3 with one fp32 scale per group of channels (DeltaQuant's core tokens, groups of 64) —
Triton kernel and launch wrappers; the reference is `dq_kernels.fp8.quantize_fp8`, matched bit for
bit (its docstring states the numerics).

One pass over X: each program takes BLOCK_M rows of one group, finds the group maximum, takes the
power-of-two scale, divides (correctly rounded, `div_rn`, as the reference), rounds to E4M3 and
stores the dequantized values v·s in BF16, exact (`fp8_group_carriers`): the core tokens' operand for
a BF16 GEMM (dq_kernels.linear_ops). A GEMM on the E4M3 values would have to apply a scale per 64
columns inside its K loop, which runs at a fraction of the FP8 rate (dq_kernels.scaled_gemm); the
BF16 GEMM applies none and computes the same products.

The PyTorch reference runs as six elementwise/reduction ops over fp32 temporaries; on the core
tokens of 4×1×4 cubes at Wan A14B 480p (2,048 × 5,120) they took ~0.2 ms of a 3.2 ms W4A4 call on
an H200 (tools/profile_linear.py), for ~50 MB of traffic that needs ~0.02 ms.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .checks import check_last_dim_multiple
from .interpreter import interpreting, round_to_e4m3

__all__ = ["fp8_group_carriers"]


@triton.jit
def _pow2_at_least(t):
    """The smallest power of two >= t, for t >= 2**-126 (a normal fp32), from the bits: t is its
    own ceiling when its mantissa is zero."""
    bits = t.to(tl.int32, bitcast=True)
    exponent = (bits >> 23) & 0xFF
    exponent = tl.where((bits & 0x7FFFFF) == 0, exponent, exponent + 1)
    return (exponent << 23).to(tl.float32, bitcast=True)


@triton.jit
def fp8_groups_kernel(x_ptr, out_ptr, M, K, stride_x, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
                      INTERPRET: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    g = tl.program_id(1)
    cols = g * GROUP + tl.arange(0, GROUP)
    inside = rows < M
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + cols[None, :], mask=inside[:, None],
                other=0.0).to(tl.float32)
    scale = tl.math.div_rn(tl.max(tl.abs(x), axis=1), 448.0)
    nonzero = scale > 0
    scale = tl.where(nonzero, _pow2_at_least(tl.maximum(scale, 1.1754943508222875e-38)), 0.0)
    v = tl.math.div_rn(x, tl.where(nonzero, scale, 1.0)[:, None])
    v = tl.where(nonzero[:, None], tl.minimum(tl.maximum(v, -448.0), 448.0), 0.0)
    if INTERPRET:
        v = round_to_e4m3(v)
    v = v.to(tl.float8e4nv).to(tl.float32)
    # 4 significant bits times a power of two: exact in BF16
    tl.store(out_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], (v * scale[:, None]).to(tl.bfloat16),
             mask=inside[:, None])


def fp8_group_carriers(x: torch.Tensor, group_size: int = 64) -> torch.Tensor:
    """x [M, K] (any float dtype) → BF16 [M, K] holding
    `dequantize_fp8(*quantize_fp8(x, group_size, pow2_scales=True), group_size)` exactly."""
    check_last_dim_multiple(x, group_size, "fp8_group_carriers")
    if group_size & (group_size - 1):
        raise ValueError(f"fp8_group_carriers: group_size must be a power of two (tl.arange), got {group_size}")
    m, k = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    out = torch.empty(m, k, dtype=torch.bfloat16, device=x.device)
    block_m = 32
    fp8_groups_kernel[(triton.cdiv(m, block_m), k // group_size)](
        x, out, m, k, x.stride(0), GROUP=group_size, BLOCK_M=block_m, INTERPRET=interpreting(), num_warps=4)
    return out
