"""Cheap guards shared by the numeric formats.

Quantizers do not look for NaN or inf themselves: a NaN scale silently poisons a whole group,
so the caller (the quantized layer) runs `check_finite` on what it is about to quantize and
names the layer in the error.
"""

from __future__ import annotations

import torch

__all__ = ["NonFiniteError", "check_finite", "check_last_dim_multiple"]


class NonFiniteError(ValueError):
    """A tensor that is about to be quantized holds NaN or inf values."""


def check_finite(x: torch.Tensor, name: str, what: str = "input") -> None:
    """Raise NonFiniteError naming `name` if `x` holds any NaN or inf.

    The common (all finite) case costs one fused `isfinite().all()`; counting only happens on
    the way to the error.
    """
    if bool(torch.isfinite(x).all()):
        return
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    first = tuple(int(i) for i in (~torch.isfinite(x)).nonzero()[0])
    raise NonFiniteError(
        f"layer '{name}': {what} has {n_nan} NaN and {n_inf} inf values "
        f"(of {x.numel()}, shape {tuple(x.shape)}, dtype {x.dtype}; first at index {first})"
    )


def check_last_dim_multiple(x: torch.Tensor, multiple: int, what: str) -> int:
    """Return K = x.shape[-1] after checking it is a positive multiple of `multiple`.

    Formats never pad: padding changes group statistics, so the caller decides how to pad.
    """
    if not isinstance(multiple, int) or multiple <= 0:
        raise ValueError(f"{what}: group/block size must be a positive int, got {multiple!r}")
    if x.dim() == 0:
        raise ValueError(f"{what}: expected a tensor with a last (K) dimension, got a scalar")
    k = x.shape[-1]
    if k % multiple != 0:
        raise ValueError(
            f"{what}: the last dimension K={k} must be a multiple of {multiple} "
            f"(shape {tuple(x.shape)}); pad K to {-(-k // multiple) * multiple} first"
        )
    return k
