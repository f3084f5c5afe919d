"""Cheap guards shared by the numeric formats.

Quantizers do not look for NaN or inf themselves: a NaN scale silently poisons a whole group,
so the caller (the quantized layer) runs `check_finite` on what it is about to quantize and
names the layer in the error.
"""

from __future__ import annotations

import os

import torch

__all__ = ["NonFiniteError", "check_finite", "check_last_dim_multiple", "finite_checks_on"]


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


def finite_checks_on(x: torch.Tensor) -> bool:
    """Whether a quantized layer checks its input with `check_finite` (DQ_CHECK_FINITE: auto, 1, 0).

    auto: on the CPU, not on a GPU. The check reads a flag back to the host, a device sync per
    layer and call: ~400 per Wan A14B forward, each draining the launch queue so that the GPU
    then waits on the host while the next layer's ~25 launches are issued. On a GPU, set
    DQ_CHECK_FINITE=1 to find the layer where NaN or inf first appear.
    """
    mode = os.environ.get("DQ_CHECK_FINITE", "auto")
    return mode == "1" or (mode == "auto" and not x.is_cuda)


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
