"""PSNR and SSIM against analytic values, an independent float64 reference and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dq_cli.quality import metrics
from dq_cli.tiny import world as w


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A world clip and a noisy copy of it, uint8 [8, 32, 32, 3]."""
    rng = np.random.default_rng(0)
    clip = w.render(w.sample_spec(3), frames=8).numpy()
    noisy = np.clip(clip + rng.normal(0, 12, clip.shape), 0, 255).astype(np.uint8)
    return clip, noisy


# --------------------------------------------------------------------------- PSNR


def test_psnr_of_constant_offset_is_analytic():
    video = np.full((4, 16, 16, 3), 100, dtype=np.uint8)
    shifted = video + np.uint8(5)  # MSE = 25 exactly
    assert metrics.psnr(shifted, video) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-12)
    assert metrics.psnr(torch.from_numpy(shifted), torch.from_numpy(video)) == pytest.approx(34.1514035, abs=1e-6)


def test_psnr_averages_frames():
    video = np.zeros((2, 8, 8, 3), dtype=np.float64)
    ref = video.copy()
    ref[0] += 0.1  # MSE 0.01
    ref[1] += 0.01  # MSE 0.0001
    per_frame = metrics.psnr_per_frame(video, ref, data_range=1.0)
    assert per_frame.tolist() == pytest.approx([20.0, 40.0])
    assert metrics.psnr(video, ref, data_range=1.0) == pytest.approx(30.0)


def test_psnr_identical_is_inf(pair):
    clip, _ = pair
    assert metrics.psnr(clip, clip.copy()) == float("inf")
    assert metrics.psnr_from_mse(0.0) == float("inf")


def test_psnr_rejects_mismatched_shapes(pair):
    clip, _ = pair
    with pytest.raises(ValueError):
        metrics.psnr(clip, clip[:-1])


# --------------------------------------------------------------------------- SSIM


def _reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM written straight from Wang et al. 2004, eqs. (13)-(17), loop-free in float64.

    Each 11x11 window is taken explicitly (``sliding_window_view``) and weighted by the
    2-D Gaussian w: mu = sum w x, sigma^2 = sum w (x - mu)^2, sigma_xy = sum w (x-mu)(y-mu).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    taps = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    weights = np.outer(taps, taps) / np.outer(taps, taps).sum()
    # [F, H', W', C, 11, 11] windows over the spatial axes.
    wx = np.lib.stride_tricks.sliding_window_view(x, (11, 11), axis=(1, 2))
    wy = np.lib.stride_tricks.sliding_window_view(y, (11, 11), axis=(1, 2))
    mu_x = (wx * weights).sum((-2, -1))
    mu_y = (wy * weights).sum((-2, -1))
    dx = wx - mu_x[..., None, None]
    dy = wy - mu_y[..., None, None]
    var_x = (weights * dx * dx).sum((-2, -1))
    var_y = (weights * dy * dy).sum((-2, -1))
    cov = (weights * dx * dy).sum((-2, -1))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean(axis=(1, 2, 3)).mean())


def test_ssim_identical_is_one(pair):
    clip, _ = pair
    assert metrics.ssim(clip, clip) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_independent_reference(pair):
    clip, noisy = pair
    assert metrics.ssim(noisy, clip) == pytest.approx(_reference_ssim(noisy, clip), abs=1e-10)
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 3, 24, 40, 3))
    assert metrics.ssim(a, b, data_range=1.0) == pytest.approx(_reference_ssim(a, b, 1.0), abs=1e-10)


def test_ssim_of_constant_images_is_the_luminance_term():
    # No variance anywhere: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    x = np.full((1, 16, 16, 3), 60.0)
    y = np.full((1, 16, 16, 3), 90.0)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 60 * 90 + c1) / (60**2 + 90**2 + c1)
    assert metrics.ssim(x, y) == pytest.approx(expected, abs=1e-12)


def test_ssim_uses_the_valid_region_only():
    # An 11x11 frame has exactly one valid window, so SSIM is that window's value
    # (a same-padded implementation would average 121 windows, mostly over padding).
    rng = np.random.default_rng(4)
    x, y = rng.random((2, 1, 11, 11, 1)) * 255
    taps = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    weights = np.outer(taps, taps) / np.outer(taps, taps).sum()
    a, b = x[0, :, :, 0], y[0, :, :, 0]
    mu_a, mu_b = (weights * a).sum(), (weights * b).sum()
    var_a, var_b = (weights * (a - mu_a) ** 2).sum(), (weights * (b - mu_b) ** 2).sum()
    cov = (weights * (a - mu_a) * (b - mu_b)).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    assert metrics.ssim(x, y) == pytest.approx(expected, abs=1e-12)


def test_ssim_drops_with_noise(pair):
    clip, noisy = pair
    rng = np.random.default_rng(2)
    noisier = np.clip(clip + rng.normal(0, 40, clip.shape), 0, 255).astype(np.uint8)
    assert 1.0 > metrics.ssim(noisy, clip) > metrics.ssim(noisier, clip) > 0.0
    assert metrics.ssim(noisy, clip) == pytest.approx(metrics.ssim(clip, noisy), abs=1e-12)


def test_ssim_rejects_tiny_frames():
    with pytest.raises(ValueError):
        metrics.ssim(np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 8, 3)))


def test_ssim_matches_scikit_image(pair):
    skimage_metrics = pytest.importorskip("skimage.metrics")
    clip, noisy = pair

    def skimage_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
        return float(
            np.mean(
                [
                    skimage_metrics.structural_similarity(
                        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                        data_range=data_range, channel_axis=-1,
                    )  # fmt: skip
                    for a, b in zip(x, y)
                ]
            )
        )

    assert metrics.ssim(noisy, clip) == pytest.approx(skimage_ssim(noisy, clip, 255), abs=1e-4)
    rng = np.random.default_rng(3)
    a = rng.random((2, 33, 47, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    assert metrics.ssim(a, b, data_range=1.0) == pytest.approx(skimage_ssim(a, b, 1.0), abs=1e-4)
