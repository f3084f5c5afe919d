"""The quantization methods: DeltaQuant's cube split, SmoothQuant smoothing, SVDQuant's low-rank
branch, and `QuantLinear` composing them — each against plain torch / float64 math."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from dq_calib.weights import fit_layer, low_rank, output_error, quantize_residual, smoothing_vector
from dq_cli.models.base import ForwardState
from dq_cli.quant.activations import quantize_core
from dq_cli.quant.linear import QuantLinear
from dq_cli.quant.plan import LayerPlan
from dq_kernels.delta_cubes import cube_ids, cube_means, cube_sizes, split_deltas
from dq_kernels.formats import fake_quant


def plan(**kw) -> LayerPlan:
    base = dict(method="deltaquant", weight="int4", activation="int4", group_size=64, rank=0, smoothing=None,
                cubes=((1.0, (2, 2, 2)),), core="fp8")
    return LayerPlan(**{**base, **kw})


@pytest.mark.parametrize("grid,cube", [((4, 4, 4), (2, 2, 2)), ((5, 3, 7), (4, 2, 8)), ((21, 3, 5), (4, 1, 4))])
def test_cube_ids_match_brute_force(grid, cube):
    ids, n = cube_ids(grid, cube)
    t, h, w = grid
    ct, ch, cw = (min(c, g) for c, g in zip(cube, grid))
    nh, nw = -(-h // ch), -(-w // cw)
    expected = [((ti // ct) * nh + hi // ch) * nw + wi // cw for ti, hi, wi in itertools.product(range(t), range(h), range(w))]
    assert ids.tolist() == expected
    assert n == -(-t // ct) * nh * nw
    assert set(ids.tolist()) == set(range(n))  # ragged edge cubes exist and none is empty
    assert cube_sizes(grid, cube).tolist() == torch.bincount(torch.tensor(expected), minlength=n).float().tolist()


def test_split_deltas_recomposes_and_means_are_float64_means():
    g = torch.Generator().manual_seed(1)
    grid, cube = (5, 3, 7), (4, 2, 8)  # ragged in every dimension
    x = torch.randn(2, 5 * 3 * 7, 16, generator=g)
    core, deltas, ids = split_deltas(x, grid, cube)
    torch.testing.assert_close(core[:, ids] + deltas, x, rtol=0, atol=1e-6)
    x64 = x.double()
    for c in range(core.shape[1]):
        members = (ids == c).nonzero().squeeze(1)
        torch.testing.assert_close(core[:, c].double(), x64[:, members].mean(dim=1), rtol=0, atol=1e-6)
    # deltas of a cube sum to zero: the mean carries everything shared
    sums = torch.zeros(2, core.shape[1], 16, dtype=torch.float64).index_add_(1, ids, deltas.double())
    assert sums.abs().max() < 1e-4


def test_cube_means_rejects_nothing_and_counts_ragged_members():
    ids = torch.tensor([0, 0, 1])
    x = torch.tensor([[[1.0], [3.0], [10.0]]])
    assert cube_means(x, ids, torch.tensor([2, 1])).flatten().tolist() == [2.0, 10.0]


def _video_like(b, grid, k, noise, generator):
    """Activations with spatio-temporal structure: a smooth field over the grid plus small noise."""
    t, h, w = grid
    coords = torch.stack(torch.meshgrid(torch.linspace(0, 1, t), torch.linspace(0, 1, h), torch.linspace(0, 1, w),
                                        indexing="ij"), dim=-1).reshape(-1, 3)
    freq = torch.randn(3, k, generator=generator) * 2
    field = torch.sin(coords @ freq + torch.randn(k, generator=generator)) * (1 + 4 * torch.rand(k, generator=generator))
    return (field + noise * torch.randn(b, t * h * w, k, generator=generator)).float()


def test_deltaquant_forward_is_core_plus_delta_composition():
    g = torch.Generator().manual_seed(2)
    grid = (4, 4, 6)
    linear = nn.Linear(128, 48)
    x = _video_like(2, grid, 128, 0.1, g)
    p = plan()
    layer = QuantLinear.from_linear(linear, p, "layer")
    layer.forward_state = ForwardState(step=0, num_steps=10, grid=grid, in_forward=True)
    core, deltas, ids = split_deltas(x, grid, (2, 2, 2))
    x_hat = quantize_core(core, "fp8")[:, ids] + fake_quant(deltas.reshape(-1, 128), "int4", 64).reshape(deltas.shape)
    expected = x_hat @ layer.residual_weight().T + linear.bias.detach()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_deltaquant_beats_rtn_on_structured_activations():
    """The paper's premise, on synthetic video-like activations: quantizing small deltas around cube
    means loses less than quantizing the tokens themselves at the same 4 bits."""
    g = torch.Generator().manual_seed(3)
    grid = (8, 8, 8)
    x = _video_like(1, grid, 128, 0.05, g)
    core, deltas, ids = split_deltas(x, grid, (4, 2, 2))
    delta_hat = quantize_core(core, "fp8")[:, ids] + fake_quant(deltas.reshape(-1, 128), "int4", 64).reshape(x.shape)
    rtn_hat = fake_quant(x.reshape(-1, 128), "int4", 64).reshape(x.shape)
    err = lambda v: ((v - x).norm() / x.norm()).item()  # noqa: E731
    # Round-to-nearest error scales with each group's absmax, so the gain should follow the ratio
    # of delta to token group ranges (the FP8 core adds little); allow 1.5x slack on that estimate.
    group_amax = lambda v: v.reshape(-1, 2, 64).abs().amax(-1).mean().item()  # noqa: E731
    predicted = group_amax(deltas) / group_amax(x)
    assert predicted < 0.8  # the synthetic activations do have cube-local structure
    assert err(delta_hat) < min(1.0, 1.5 * predicted) * err(rtn_hat)


def test_text_tokens_and_no_grid_fall_back_to_per_token_rounding():
    g = torch.Generator().manual_seed(4)
    linear = nn.Linear(64, 16)
    x = torch.randn(1, 10 + 2 * 2 * 2, 64, generator=g)
    layer = QuantLinear.from_linear(linear, plan(), "joint")
    # CogVideoX-style: 10 text tokens first, then a 2x2x2 video grid
    layer.forward_state = ForwardState(grid=(2, 2, 2), text_tokens=10, num_steps=4, in_forward=True)
    y = layer(x)
    rtn = fake_quant(x[0, :10], "int4", 64) @ layer.residual_weight().T + linear.bias.detach()
    torch.testing.assert_close(y[0, :10], rtn, rtol=1e-5, atol=1e-5)
    layer.forward_state = None  # outside a tracked forward: everything per token
    full = fake_quant(x[0], "int4", 64) @ layer.residual_weight().T + linear.bias.detach()
    torch.testing.assert_close(layer(x)[0], full, rtol=1e-5, atol=1e-5)


def test_smoothing_vector_formula_in_float64():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(32, 64, generator=g)
    act = torch.rand(64, generator=g) * 10
    lam = smoothing_vector(act, w, 0.6)
    ref = act.double().pow(0.6) / w.double().abs().amax(dim=0).pow(0.4)
    torch.testing.assert_close(lam.double(), ref, rtol=1e-5, atol=0)


def test_smoothing_helps_when_activations_have_outlier_channels():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(64, 128, generator=g) * 0.05
    x = torch.randn(512, 128, generator=g)
    x[:, :4] *= 60  # a few outlier channels, as DiT activations have
    absmax = x.abs().amax(dim=0)
    plain = output_error(x, w, None, None, None, "int4", "int4", 64)
    lam = smoothing_vector(absmax, w, 0.5)
    smoothed = output_error(x, w, lam, None, None, "int4", "int4", 64)
    assert smoothed < 0.7 * plain


def test_low_rank_refinement_never_increases_the_quantization_error():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(96, 128, generator=g) @ torch.diag(torch.linspace(3, 0.1, 128)) * 0.1
    w[:, :3] += 2.0  # a strong low-rank structure (outlier input channels folded in by smoothing)

    def err(up, down):
        r = w - up.float() @ down.float()
        return (r - quantize_residual(r, "int4", 64)).norm().item()

    up0, down0, _ = low_rank(w, 8, "int4", 64, iters=0)
    up, down, steps = low_rank(w, 8, "int4", 64)
    assert err(up, down) <= err(up0, down0) + 1e-6
    no_branch = (w - quantize_residual(w, "int4", 64)).norm().item()
    assert err(up, down) < 0.8 * no_branch
    assert up.dtype == down.dtype == torch.bfloat16 and up.shape == (96, 8) and down.shape == (8, 128)


def test_fit_layer_returns_the_best_alpha_of_its_grid():
    g = torch.Generator().manual_seed(8)
    w = torch.randn(32, 64, generator=g) * 0.1
    x = torch.randn(256, 64, generator=g)
    x[:, 5] *= 40
    absmax = x.abs().amax(dim=0)
    grid = (0.2, 0.5, 0.8)
    fit = fit_layer(w, x, absmax, fmt="int4", act_fmt="int4", group_size=64, rank=0, alphas=grid)
    errors = {a: output_error(x, w, smoothing_vector(absmax, w, a), None, None, "int4", "int4", 64) for a in grid}
    assert fit.alpha == min(errors, key=errors.get)
    assert fit.error == pytest.approx(min(errors.values()), rel=1e-6)


def test_svdquant_layer_forward_matches_its_formula():
    g = torch.Generator().manual_seed(9)
    linear = nn.Linear(64, 32)
    x = torch.randn(3, 20, 64, generator=g)
    fit = fit_layer(linear.weight.detach(), x.reshape(-1, 64), x.reshape(-1, 64).abs().amax(0), fmt="int4",
                    act_fmt="int4", group_size=64, rank=4, alphas=(0.5,))
    layer = QuantLinear.from_linear(linear, plan(method="svdquant", rank=4), "l", smooth=fit.smooth,
                                    lora_up=fit.lora_up, lora_down=fit.lora_down)
    xs = x / fit.smooth
    branch = (xs.to(torch.bfloat16) @ fit.lora_down.T).float() @ fit.lora_up.float().T
    expected = branch + fake_quant(xs.reshape(-1, 64), "int4", 64).reshape(xs.shape) @ layer.residual_weight().T
    torch.testing.assert_close(layer(x), expected + linear.bias.detach(), rtol=1e-4, atol=1e-4)
    # and the stored residual is Q(W·λ − L₁L₂), not of W
    resid = linear.weight.detach() * fit.smooth - fit.lora_up.float() @ fit.lora_down.float()
    torch.testing.assert_close(layer.residual_weight(), quantize_residual(resid, "int4", 64), rtol=0, atol=1e-6)
