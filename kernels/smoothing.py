"""SmoothQuant/SVDQuant smoothing of the activations, X/λ, as every path computes it: X times the
fp32 reciprocal of λ.

A multiply rather than a division because the GPU quantizers apply it to every element of X, and
a correctly rounded division there cost about a third of the W4A4 quantizer's time on an H200
(tools/kernel_probe.py). The reciprocal is one correctly rounded division per channel, the same
on every device, so the kernels and the PyTorch reference stay bit-identical.
"""

from __future__ import annotations

import torch

__all__ = ["inverse_smooth", "apply_smooth"]


def inverse_smooth(smooth: torch.Tensor) -> torch.Tensor:
    """1/λ in fp32 (what the kernels multiply by). `torch.reciprocal`: the same correctly rounded
    values as `1.0 / λ`, which torch computes as reciprocal times 1.0 (a second launch)."""
    return torch.reciprocal(smooth.float())


def apply_smooth(x: torch.Tensor, smooth: torch.Tensor | None) -> torch.Tensor:
    """X/λ in fp32 (X unchanged but for the dtype when there is no smoothing)."""
    return x.float() * inverse_smooth(smooth) if smooth is not None else x.float()
