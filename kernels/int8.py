"""Symmetric INT8 with one fp32 scale per row of K — the PyTorch reference.

"Per row" covers both uses of a linear layer: weights [N, K] get one scale per output channel,
activations [tokens, K] one per token. K is the last dimension; leading dims are free.

- codes   int8     [..., K]   values in -127..127 (-128 unused: the grid stays symmetric, and
                              -128 * -128 products cannot overflow an int8 x int8 -> int16 step)
- scales  float32  [..., 1]   amax/127 per row

Numerics (what a kernel must reproduce bit for bit):
    s    = fp32(amax_row / 127)
    code = clamp(round_half_even(fp32(x / s)), -127, 127)     0 where s == 0
    x̂    = fp32(code * s)
Inputs of any float dtype are converted to fp32 first. An all-zero row has s = 0 and
dequantizes to 0; s = 0 also keeps an int GEMM's rescale exact.
"""

from __future__ import annotations

import torch

from .checks import check_last_dim_multiple

__all__ = ["quantize_int8_rowwise", "dequantize_int8"]

INT8_MAX = 127


def quantize_int8_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize each row (last dim) of `x` to int8 codes and an fp32 scale [..., 1]."""
    check_last_dim_multiple(x, 1, "quantize_int8_rowwise")
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True) / INT8_MAX
    # where(): an all-zero row must give codes 0, not 0/0 = NaN.
    q = torch.where(scale > 0, xf / scale, torch.zeros_like(xf))
    codes = torch.round(q).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, scale


def dequantize_int8(
    codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of `quantize_int8_rowwise`: codes [..., K] int8 times scales [..., 1]."""
    if scales.shape != (*codes.shape[:-1], 1):
        raise ValueError(
            f"dequantize_int8: scales shape {tuple(scales.shape)} must be codes' shape with a "
            f"last dim of 1, codes {tuple(codes.shape)}"
        )
    return (codes.float() * scales.float()).to(dtype)
