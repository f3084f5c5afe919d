"""FP8 E4M3 (torch.float8_e4m3fn, max 448) with fp32 scales per token or per group of K.

K is the last dimension; leading dims are free.

- values  float8_e4m3fn  [..., K]
- scales  float32        [..., 1]               group_size None: one scale per row (token)
                         [..., K // group_size] otherwise (DeltaQuant core tokens: groups of 64)

Numerics (what a kernel must reproduce bit for bit):
    s = fp32(amax / 448)                      or, with `pow2_scales`, the smallest power of two
                                              >= max(fp32(amax / 448), 2**-126)
    v = e4m3(clamp(fp32(x / s), -448, 448))    round to nearest even; 0 where s == 0
    x̂ = fp32(float(v) * s)
The clamp is explicit because the fp32 quotient can exceed 448 by an ulp and the cast's
overflow behaviour differs (torch CPU saturates, GPU kernels use satfinite, a plain cvt gives
NaN). An all-zero row/group has s = 0 and dequantizes to 0, never NaN. Inputs of any float
dtype are converted to fp32 first.

Power-of-two scales (DeltaQuant's core tokens) cost nothing in precision — E4M3 is a float, so
the scale only moves which binade the group's largest value lands in, (224, 448] instead of 448 —
and make every x̂ = v·s exact in BF16 (4 significant bits times a power of two). That lets the
core tokens' GEMM run on BF16 tensor cores with the FP8 values exactly (dq_kernels.fp8_quantize).
"""

from __future__ import annotations

import torch

from .checks import check_last_dim_multiple
from .int4 import pow2_ceil

__all__ = ["quantize_fp8", "dequantize_fp8"]

E4M3_MAX = 448.0


def _groups(x: torch.Tensor, group_size: int | None) -> torch.Tensor:
    if group_size is None:  # one group spanning the row
        return x.unsqueeze(-2)
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def quantize_fp8(
    x: torch.Tensor, group_size: int | None = None, pow2_scales: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize `x` to E4M3 with one fp32 scale per row (group_size None) or per group."""
    if group_size is not None:
        check_last_dim_multiple(x, group_size, "quantize_fp8")
    xg = _groups(x.float(), group_size)
    scale = xg.abs().amax(dim=-1, keepdim=True) / E4M3_MAX
    if pow2_scales:
        # The floor keeps the kernels' exponent arithmetic on normal numbers (0 stays 0).
        scale = torch.where(scale > 0, pow2_ceil(scale.clamp_min(2.0**-126)), scale)
    # where(): an all-zero row/group must give 0, not 0/0 = NaN.
    v = torch.where(scale > 0, xg / scale, torch.zeros_like(xg))
    values = v.clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return values.reshape(x.shape), scale.squeeze(-1)


def dequantize_fp8(
    values: torch.Tensor,
    scales: torch.Tensor,
    group_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of `quantize_fp8`, with the same `group_size`."""
    k = values.shape[-1]
    n_groups = 1 if group_size is None else k // group_size
    if group_size is not None:
        check_last_dim_multiple(values, group_size, "dequantize_fp8")
    if scales.shape != (*values.shape[:-1], n_groups):
        raise ValueError(
            f"dequantize_fp8: scales shape {tuple(scales.shape)} does not match values "
            f"{tuple(values.shape)} with group_size={group_size}"
        )
    xg = _groups(values.float(), group_size) * scales.float().unsqueeze(-1)
    return xg.reshape(values.shape).to(dtype)
