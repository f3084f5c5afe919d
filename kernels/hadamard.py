"""Block Hadamard rotation along the last dimension (6Bit-Diffusion's online outlier smoothing).

H_b is the Sylvester Hadamard matrix of size b (a power of two) scaled by 1/√b: orthonormal and
symmetric, so it is its own inverse and X·Wᵀ = (X·H)(W·H)ᵀ blockwise. Rotating spreads a channel
outlier over its block of b channels before both operands are rounded. The last dimension must be
a multiple of b (callers pad with zeros, which stay zeros after rotation of a zero block).
"""

from __future__ import annotations

import functools
import math

import torch

from .checks import check_last_dim_multiple

__all__ = ["hadamard_matrix", "block_hadamard"]


@functools.lru_cache(maxsize=8)
def _sylvester(b: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < b:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(b)).float()


def hadamard_matrix(b: int, device=None) -> torch.Tensor:
    if b < 2 or b & (b - 1):
        raise ValueError(f"block Hadamard: block size must be a power of two ≥ 2, got {b}")
    return _sylvester(b).to(device)


def block_hadamard(x: torch.Tensor, b: int) -> torch.Tensor:
    """x [..., K] (K a multiple of b) → x rotated by H_b on each block of b channels, fp32."""
    check_last_dim_multiple(x, b, "block_hadamard")
    h = hadamard_matrix(b, x.device)
    return (x.float().reshape(*x.shape[:-1], x.shape[-1] // b, b) @ h).reshape(x.shape)
