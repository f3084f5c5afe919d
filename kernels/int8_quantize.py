"""Per-token INT8 activations for the W8A8 route — Triton kernel, launch wrapper; the reference is
`dq_kernels.int8.quantize_int8_rowwise` (applied to X/λ).

One program per token: a first pass over the row finds |x/λ|'s maximum, a second rounds. The row
(K·2 bytes, 27 KB at K = 13,824) is still in L2 for the second pass. λ is applied as X·(1/λ)
(dq_kernels.smoothing) and the division by the token's scale is correctly rounded (`div_rn`), as
the reference's, so the codes are bit-identical to it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .smoothing import inverse_smooth

__all__ = ["quantize_int8_tokens"]


@triton.jit
def int8_tokens_kernel(x_ptr, inv_smooth_ptr, q_ptr, scale_ptr, K, stride_x,
                       HAS_SMOOTH: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs
        v = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
        if HAS_SMOOTH:
            v = v * tl.load(inv_smooth_ptr + cols, mask=cols < K, other=1.0)
        amax = tl.maximum(amax, tl.abs(v))
    scale = tl.math.div_rn(tl.max(amax, axis=0), 127.0)
    safe = tl.where(scale > 0, scale, 1.0)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs
        v = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
        if HAS_SMOOTH:
            v = v * tl.load(inv_smooth_ptr + cols, mask=cols < K, other=1.0)
        q = tl.math.div_rn(v, safe)
        q = (q + 12582912.0) - 12582912.0  # round half to even
        q = tl.minimum(tl.maximum(q, -127.0), 127.0)
        q = tl.where(scale > 0, q, 0.0)
        tl.store(q_ptr + row * K + cols, q.to(q_ptr.dtype.element_ty), mask=cols < K)
    tl.store(scale_ptr + row, scale)


def quantize_int8_tokens(x: torch.Tensor, smooth: torch.Tensor | None = None, codes_dtype: torch.dtype = torch.int8
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (any float dtype) → int8 codes [M, K] and fp32 scales [M] of X/λ, per token.
    `codes_dtype=torch.bfloat16` writes the same codes as BF16 numbers (|q| ≤ 127: exact), the
    operand of 6Bit's BF16 carrier GEMM (dq_cli/quant/carrier_path.py)."""
    m, k = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    q = torch.empty(m, k, dtype=codes_dtype, device=x.device)
    scale = torch.empty(m, dtype=torch.float32, device=x.device)
    int8_tokens_kernel[(m,)](x, inverse_smooth(smooth) if smooth is not None else scale, q, scale, k, x.stride(0),
                             HAS_SMOOTH=smooth is not None, BLOCK_K=1024, num_warps=4)
    return q, scale
