"""Full-reference video quality: PSNR and SSIM of a video against a reference video.

Both are computed per frame and averaged over frames. Videos are ``[frames, H, W, C]``
(channels last, as decoded videos and ``dq_cli.tiny.world.render`` give them) or a
single image ``[H, W, C]``; uint8 or float, torch or numpy. Everything is computed in
float64.

SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to
structural similarity"): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
K2 = 0.03, population (not sample) covariances, computed per channel and averaged
over the *valid* region only (where the whole window lies inside the image, no
padding). This is the convention of ``skimage.metrics.structural_similarity(...,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
channel_axis=-1)``, which the tests check against.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_frames(video: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Any [F, H, W, C] / [H, W, C] input as float64 [F, C, H, W]."""
    video = torch.as_tensor(video).detach().cpu().to(torch.float64)
    if video.ndim == 3:
        video = video[None]
    if video.ndim != 4:
        raise ValueError(f"expected [frames, height, width, channels], got shape {tuple(video.shape)}")
    return video.permute(0, 3, 1, 2)


def _check_pair(video: torch.Tensor, ref: torch.Tensor) -> None:
    if video.shape != ref.shape:
        raise ValueError(f"video and reference differ in shape: {tuple(video.shape)} vs {tuple(ref.shape)}")


def psnr_per_frame(video, ref, data_range: float = 255.0) -> torch.Tensor:
    """PSNR in dB of each frame, float64 [frames]; ``inf`` where a frame is identical."""
    x, y = _as_frames(video), _as_frames(ref)
    _check_pair(x, y)
    mse = (x - y).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)  # mse == 0 -> inf


def psnr(video, ref, data_range: float = 255.0) -> float:
    """Mean over frames of the per-frame PSNR in dB.

    ``data_range`` is the span of valid values: 255 for uint8, 1.0 for [0, 1] floats,
    2.0 for [-1, 1]. Identical videos give ``inf`` (and so does a video with any
    identical frame, as the mean of per-frame values).
    """
    return float(psnr_per_frame(video, ref, data_range).mean())


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalized 1-D Gaussian taps, float64 [size]."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def _filter(images: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, valid region only: [N, C, H, W] -> [N, C, H-10, W-10]."""
    channels = images.shape[1]
    rows = taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    cols = taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    return F.conv2d(F.conv2d(images, rows, groups=channels), cols, groups=channels)


def ssim_per_frame(video, ref, data_range: float = 255.0) -> torch.Tensor:
    """SSIM of each frame (mean over channels and valid pixels), float64 [frames]."""
    x, y = _as_frames(video), _as_frames(ref)
    _check_pair(x, y)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}")
    taps = gaussian_window()
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2

    mu_x, mu_y = _filter(x, taps), _filter(y, taps)
    # Population (co)variances under the window: E[xy] - E[x]E[y].
    var_x = _filter(x * x, taps) - mu_x * mu_x
    var_y = _filter(y * y, taps) - mu_y * mu_y
    cov_xy = _filter(x * y, taps) - mu_x * mu_y

    luminance_contrast = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    normalizer = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (luminance_contrast / normalizer).flatten(1).mean(1)


def ssim(video, ref, data_range: float = 255.0) -> float:
    """Mean over frames of the per-frame SSIM (1.0 for identical videos)."""
    return float(ssim_per_frame(video, ref, data_range).mean())


def psnr_from_mse(mse: float, data_range: float = 255.0) -> float:
    """PSNR in dB for a given mean squared error (``inf`` for 0)."""
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


__all__ = ["gaussian_window", "psnr", "psnr_from_mse", "psnr_per_frame", "ssim", "ssim_per_frame"]
