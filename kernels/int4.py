"""Symmetric INT4 with one 16-bit scale per group of K — the PyTorch reference.

Layout (K is the last dimension: weights [N, K], activations [tokens, K]; leading dims free):

- codes   int8  [..., K]        values in -8..7 (quantize only produces -7..7: the scale is
                                amax/7, so the grid stays symmetric)
- scales  bf16  [..., K // g]   amax/7 per group of g (default 64) consecutive K elements;
                                bf16 rather than fp16 because DiT activations overflow fp16
- packed  uint8 [..., K // 2]   element 2i in the low nibble, 2i+1 in the high nibble, each a
                                two's-complement nibble (code & 0xF)

Numerics (what a kernel must reproduce bit for bit):
    s    = bf16(fp32(amax_group) / 7)          round-to-nearest-even at both steps
    code = clamp(round_half_even(fp32(x / float(s))), -8, 7)     0 where s == 0
    x̂    = code * float(s)                     exact in fp32
Inputs of any float dtype are converted to fp32 first. Quantizing with the *stored* scale
makes x̂ the nearest grid point: |x/s| <= 7·(1 + 2**-8) < 7.5, so nothing clips and
|x - x̂| <= s/2 (while s is a normal bf16, i.e. amax >= 7·2**-126). An all-zero group has
s = 0, codes 0 and dequantizes to 0.

`reciprocal=True` (what the `int4_row` format uses) rounds fp32(x · fp32(1/s)) instead of
fp32(x / s): a kernel then divides once per row, not once per element (a correctly rounded
division per element was most of the activation quantizer's time on an H200). The two differ only
where x/s lies within an ulp or two of a half-integer: a code one step away, still within s/2 of x
up to those ulps.

`pow2_scales=True` rounds the scale UP to a power of two (E8M0-style: a scale that folds
exactly into an FP8/INT8 operand); rounding up keeps |x/s| <= 7, so nothing clips. The group
scales of a row are also kept within 2**POW2_SPAN of the row's largest one (a smaller group
takes the floor, a coarser but valid scale), so that every value of the row, code·s / s_row·2**6,
is exact in E4M3: |code| <= 7 needs 3 significant bits, and E4M3 holds 7·2**-9 (its smallest
subnormal step is 2**-9) up to 7·2**6 = 448. That is what lets the Hopper kernel multiply one
E4M3 "carrier" per operand with a single per-row scale outside the K loop.
"""

from __future__ import annotations

import torch

from .checks import check_last_dim_multiple

__all__ = ["quantize_int4", "dequantize_int4", "pack_int4", "unpack_int4"]

INT4_MIN = -8
INT4_MAX = 7
POW2_SPAN = 15  # log2 of the largest ratio between two group scales of one row (pow2 scales)


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def pow2_ceil(v: torch.Tensor) -> torch.Tensor:
    """Smallest power of two >= v (v >= 0, fp32); 0 stays 0."""
    mantissa, exponent = torch.frexp(v)  # v = mantissa * 2**exponent, mantissa in [0.5, 1)
    # An exact power of two has mantissa 0.5 and is its own ceiling.
    exponent = torch.where(mantissa == 0.5, exponent - 1, exponent)
    return torch.where(v > 0, torch.ldexp(torch.ones_like(v), exponent), torch.zeros_like(v))


def quantize_int4(
    x: torch.Tensor, group_size: int = 64, pow2_scales: bool = False, reciprocal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize the last dim of `x` to INT4 codes (int8 storage) and bf16 group scales."""
    check_last_dim_multiple(x, group_size, "quantize_int4")
    xg = _groups(x.float(), group_size)
    scale = xg.abs().amax(dim=-1, keepdim=True) / INT4_MAX
    if pow2_scales:
        scale = pow2_ceil(scale)
        floor = scale.amax(dim=-2, keepdim=True) * 2.0**-POW2_SPAN
        scale = torch.maximum(scale, floor)
    scale_bf16 = scale.to(torch.bfloat16)
    s = scale_bf16.float()
    # where(): an all-zero group has s == 0 and must give code 0, not 0/0 = NaN.
    q = torch.where(s > 0, xg * (1.0 / s) if reciprocal else xg / s, torch.zeros_like(xg))
    codes = torch.round(q).clamp_(INT4_MIN, INT4_MAX).to(torch.int8)
    return codes.reshape(x.shape), scale_bf16.squeeze(-1)


def dequantize_int4(
    codes: torch.Tensor,
    scales: torch.Tensor,
    group_size: int = 64,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of `quantize_int4`: codes [..., K] int8, scales [..., K // group_size]."""
    k = check_last_dim_multiple(codes, group_size, "dequantize_int4")
    if scales.shape != (*codes.shape[:-1], k // group_size):
        raise ValueError(
            f"dequantize_int4: scales shape {tuple(scales.shape)} does not match codes "
            f"{tuple(codes.shape)} with group_size={group_size}"
        )
    xg = _groups(codes.float(), group_size) * scales.float().unsqueeze(-1)
    return xg.reshape(codes.shape).to(dtype)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack int8 codes in -8..7 two per byte: element 2i low nibble, 2i+1 high nibble."""
    check_last_dim_multiple(codes, 2, "pack_int4")
    if codes.numel() and (int(codes.min()) < INT4_MIN or int(codes.max()) > INT4_MAX):
        raise ValueError("pack_int4: codes must lie in -8..7")
    nibbles = codes.to(torch.int16) & 0xF  # two's-complement nibble
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`: uint8 [..., K // 2] -> int8 codes [..., K]."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4: expected uint8, got {packed.dtype}")
    p = packed.to(torch.int16)
    nibbles = torch.stack((p & 0xF, p >> 4), dim=-1)
    # Sign-extend a 4-bit two's-complement value: 8..15 -> -8..-1.
    signed = (nibbles ^ 8) - 8
    return signed.reshape(*packed.shape[:-1], packed.shape[-1] * 2).to(torch.int8)
