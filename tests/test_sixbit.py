"""6Bit-Diffusion: Γ and the Δ statistics against hand computations, the Γ→error regression on
synthetic data, the threshold against its bit target, the routing rules (first step and after a
skip take INT8), the Temporal Delta Cache on a fake block (max skips, reset at the expert switch,
CFG branches apart, cached Δ reused), and the CLI flow calibrate → predictor-fit → quantize →
generate on a tiny two-expert Wan folder."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from diffusers.hooks import HookRegistry
from torch import nn

from conftest import recipe_data, run_dq, write_recipe
from dq_calib.predictor import (ROUTE_BITS, Decisions, LayerPredictor, Predictor, choose_threshold, decisions,
                                fit_layers, fit_line)
from dq_calib.trajectories import Trajectories, cosine, gamma, rel_error, rel_l1_change
from dq_cli.models.base import ForwardState
from dq_cli.quant.linear import QuantLinear
from dq_cli.quant.plan import LayerPlan
from dq_cli.quant.runtime import RuntimeStats, SixBitBlockHook
from dq_cli.quant.tdc import TDCConfig, simulate

NVFP4_PLAN = LayerPlan(method="rtn", weight="nvfp4", activation="nvfp4", group_size=64, rank=0, smoothing=None,
                       cubes=None, core="fp8")


# ------------------------------------------------------------------ metrics by hand


def test_gamma_and_delta_metrics_match_hand_computation():
    x = torch.tensor([[[1.0, -2.0], [3.0, 0.0]], [[2.0, 2.0], [0.0, -4.0]]])      # [B=2, S=2, C=2]
    y = torch.tensor([[[1.5, -2.0], [2.0, 1.0]], [[2.0, 2.0], [0.0, -4.0]]])
    # row 0: |out − in|₁ = 0.5 + 0 + 1 + 1 = 2.5, |in|₁ = 1 + 2 + 3 + 0 = 6; row 1: unchanged.
    assert gamma(x, y).tolist() == pytest.approx([2.5 / 6, 0.0])
    new, old = torch.tensor([[3.0, 4.0]]), torch.tensor([[3.0, 0.0]])
    assert rel_l1_change(new, old).item() == pytest.approx(4.0 / 3.0)
    assert cosine(new, old).item() == pytest.approx(3.0 / 5.0)
    assert rel_error(new, old).item() == pytest.approx(4.0 / 3.0)


class FakeBlock(nn.Module):
    """out = in + Δ, with Δ set by the test per call; a QuantLinear inside to be routed."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = QuantLinear.from_linear(nn.Linear(16, 16), NVFP4_PLAN, "t.blocks.0.proj")
        self.delta = torch.zeros(1, 4, 16)
        self.calls = 0

    def forward(self, hidden_states):
        self.calls += 1
        self.proj(hidden_states)
        return hidden_states + self.delta


def test_calibration_observer_records_gamma_and_delta_change_per_branch():
    from dq_cli.calibrate import TRAJECTORY_HOOK, BlockObserver

    block, state = FakeBlock(), ForwardState(num_steps=3)
    traj = Trajectories(["t.blocks.0"], [], [], [], prompts=1, steps=3)
    HookRegistry.check_if_exists_or_initialize(block).register_hook(
        BlockObserver(SimpleNamespace(state=state), traj, 0, [0]), TRAJECTORY_HOOK)
    x = torch.ones(1, 4, 16)
    deltas = [torch.full((1, 4, 16), 0.5), torch.full((1, 4, 16), 0.6)]
    for step, d in enumerate(deltas):
        for branch, scale in (("cond", 1.0), ("uncond", -1.0)):
            state.step, state.branches = step, (branch,)
            block.delta = d * scale
            block(x)
    assert traj.gamma[0, 0, 0, 0].item() == pytest.approx(0.5)      # ‖Δ‖₁/‖x‖₁ = 0.5·64/64
    assert traj.gamma[0, 1, 1, 0].item() == pytest.approx(0.6)
    assert math.isnan(traj.delta_rel_l1[0, 0, 0, 0].item())        # no previous step
    assert traj.delta_rel_l1[0, 1, 0, 0].item() == pytest.approx(0.1 / 0.5)
    assert traj.delta_rel_l1[0, 1, 1, 0].item() == pytest.approx(0.1 / 0.5)  # vs its own branch, not cond's
    assert traj.delta_cos[0, 1, 1, 0].item() == pytest.approx(1.0)
    assert math.isnan(traj.gamma[0, 2, 0, 0].item())               # step 2 never ran


# ------------------------------------------------------------------ the regression


def test_fit_line_recovers_known_alpha_beta():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, generator=g, dtype=torch.float64)
    exact = fit_line(x, 0.37 * x + 0.021)
    assert (exact.alpha, exact.beta, exact.r2) == pytest.approx((0.37, 0.021, 1.0), abs=1e-12)
    noisy = fit_line(x, 0.37 * x + 0.021 + 0.01 * torch.randn(400, generator=g, dtype=torch.float64))
    assert noisy.alpha == pytest.approx(0.37, abs=0.01) and noisy.beta == pytest.approx(0.021, abs=0.005)
    assert 0.9 < noisy.r2 < 1.0 and noisy.resid_std == pytest.approx(0.01, rel=0.15)
    flat = fit_line(torch.full((5,), 2.0), torch.arange(5.0))
    assert flat.alpha == 0.0 and flat.beta == 2.0 and math.isnan(flat.r2)


def _synthetic(alpha=(0.5, 2.0), beta=(0.01, -0.02), prompts=3, steps=6, seed=0) -> Trajectories:
    """Two blocks, one linear each, E_rel(t) = α·Γ(t−1) + β exactly (int8: a tenth of it)."""
    g = torch.Generator().manual_seed(seed)
    traj = Trajectories(["t.blocks.0", "t.blocks.1"], ["t.blocks.0.a", "t.blocks.1.b"], [0, 1], ["nvfp4", "int8"],
                        prompts, steps)
    traj.gamma = torch.rand(prompts, steps, 2, 2, generator=g) + 0.1
    for i in range(2):
        e = torch.full((prompts, steps, 2), 0.3)
        e[:, 1:] = alpha[i] * traj.gamma[:, :-1, :, i] + beta[i]
        traj.erel[..., i, 0], traj.erel[..., i, 1] = e, e / 10
    return traj


def test_regressions_use_the_previous_steps_gamma():
    layers = fit_layers(_synthetic(), "nvfp4", {"t.blocks.0.a": 64, "t.blocks.1.b": 256})
    a, b = layers["t.blocks.0.a"], layers["t.blocks.1.b"]
    assert (a.alpha, a.beta, b.alpha, b.beta) == pytest.approx((0.5, 0.01, 2.0, -0.02), abs=1e-5)
    assert a.r2 == pytest.approx(1.0, abs=1e-6) and a.n == 3 * 5 * 2  # step 0 has no Γ(t−1)
    assert (a.block, b.in_features) == ("t.blocks.0", 256)


@pytest.mark.parametrize("static", [False, True])
def test_predictor_fit_library_records_what_it_chose(static, tmp_path):
    """`dq_cli.predictor_fit.fit` (what `dq predictor-fit` prints and writes): the predictor holds the
    chosen kind's fits and threshold, its achieved record is the chosen mix's, the other kind is
    fitted at the same target, and the regressions reported (median R²) are the dynamic ones whatever
    kind was asked — exact here (E_rel = α·Γ(t−1) + β), so R² is 1."""
    from dq_cli import predictor_fit
    from dq_cli.recipe import parse

    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "recipes" / "tiny_6bit.yaml").read_text()
    recipe = parse(text.replace("target_bits: 6.0", "target_bits: 6.5"))
    traj = _synthetic(prompts=2, steps=6)
    traj.delta_rel_l1 = torch.full_like(traj.gamma, 1.0)  # TDC would never skip (budget_tdc is false anyway)
    cal = SimpleNamespace(trajectories=traj, summary={"layers": {"t.blocks.0.a": {"in_features": 64},
                                                               "t.blocks.1.b": {"in_features": 256}}})
    result = predictor_fit.fit(recipe, cal, tmp_path / "cal.json", static=static)
    p = result.predictor
    assert p.kind == ("static" if static else "dynamic") and p.threshold == result.choice.threshold
    assert p.achieved["bits"] == result.choice.bits and p.target_bits == 6.5 and result.choice.bits <= 6.5 + 1e-9
    assert set(p.layers) == {"t.blocks.0.a", "t.blocks.1.b"} and p.layers["t.blocks.1.b"].in_features == 256
    assert p.achieved["median_r2"] == pytest.approx(1.0, abs=1e-6)
    assert all(f.alpha != 0 for f in result.dynamic_fits.values())  # the Γ regressions, not the static mix
    assert (p.layers is result.dynamic_fits) == (not static)
    assert result.goal == "target 6.50 bits" and result.tdc_skip_estimate is None
    files, shown = predictor_fit.draw(result, traj, tmp_path / "plots")
    assert shown >= 1 and all(f.read_bytes().startswith(b"\x89PNG") for f in files.values())


def test_decisions_count_tdc_skips_as_predictor_fit_replays_them():
    traj = _synthetic(prompts=1, steps=6)
    layers = fit_layers(traj, "nvfp4", {})
    plain = decisions(traj, layers, "nvfp4")
    assert plain.predicted.numel() == 2 * 6 * 2 and torch.isinf(plain.predicted).sum() == 2 * 2  # step 0
    skipped = torch.zeros(1, 6, 2, 2, dtype=torch.bool)
    skipped[0, 3, 0, 0] = True          # block 0, cond branch, step 3
    d = decisions(traj, layers, "nvfp4", skipped=skipped)
    assert d.predicted.numel() == plain.predicted.numel() - 1               # its layer did not run
    on = (d.layer == 0) & (d.step == 4)
    assert torch.isinf(d.predicted[on]).sum() == 1                          # cond after the skip: forced
    assert torch.isinf(d.predicted[(d.layer == 1) & (d.step == 4)]).sum() == 0  # the other block: not
    static = decisions(traj, fit_layers(traj, "nvfp4", {}, static=True), "nvfp4", static=True, skipped=skipped)
    assert not torch.isinf(static.predicted).any()                           # a static mix needs no Γ


# ------------------------------------------------------------------ the threshold


def _decisions(n=500, forced=40, seed=1) -> Decisions:
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(n, generator=g, dtype=torch.float64)
    pred[:forced] = math.inf
    low = pred.clamp(max=1.0) + 0.05
    return Decisions(pred, torch.randint(1, 4, (n,), generator=g).double() * 64, low, low / 10,
                     torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize("target", [5.0, 6.0, 7.2])
def test_threshold_meets_the_target_bits_and_spends_it(target):
    d = _decisions()
    c = choose_threshold(d, ROUTE_BITS["nvfp4"], ROUTE_BITS["int8"], target_bits=target)
    safe = d.predicted > c.threshold
    bits = float((d.weight * torch.where(safe, 8.0, 4.5)).sum() / d.weight.sum())
    assert c.met and bits == pytest.approx(c.bits) and bits <= target
    assert safe[:40].all()                                  # forced evaluations stay INT8
    # Maximal: moving the next-highest prediction to INT8 would break the target.
    nxt = d.predicted[~safe].argmax()
    more = bits + float(d.weight[~safe][nxt] * 3.5 / d.weight.sum())
    assert more > target
    # The highest predicted errors are the ones on INT8.
    assert d.predicted[safe & torch.isfinite(d.predicted)].min() > d.predicted[~safe].max()


def test_threshold_meets_the_target_on_every_prompt():
    # Three prompts whose predicted errors run high, middle and low: a threshold on the pooled
    # evaluations would put the first prompt over the target while the average stays under it.
    g = torch.Generator().manual_seed(3)
    n = 300
    prompt = torch.arange(n) // 100
    pred = torch.rand(n, generator=g, dtype=torch.float64) * 0.5 + (2 - prompt).double() * 0.25
    w = torch.randint(1, 4, (n,), generator=g).double() * 64
    d = Decisions(pred, w, pred + 0.05, pred / 10, torch.zeros(n, dtype=torch.long),
                  torch.zeros(n, dtype=torch.long), prompt)
    c = choose_threshold(d, 4.5, 8.0, target_bits=6.0)
    safe = d.predicted > c.threshold
    per_prompt = [float((w[m] * torch.where(safe[m], 8.0, 4.5)).sum() / w[m].sum()) for m in (prompt == 0, prompt == 1, prompt == 2)]
    assert c.met and max(per_prompt) <= 6.0 and max(per_prompt) == pytest.approx(c.worst_prompt_bits)
    # Maximal: the next evaluation in line for INT8 would break the target of its own prompt.
    nxt = int(torch.nonzero(~safe).flatten()[d.predicted[~safe].argmax()])
    m = prompt == prompt[nxt]
    assert per_prompt[int(prompt[nxt])] + float(w[nxt] * 3.5 / w[m].sum()) > 6.0
    # Pooled, the same evaluations would have met the target with more INT8.
    pooled = choose_threshold(Decisions(pred, w, pred + 0.05, pred / 10, d.layer, d.step), 4.5, 8.0, target_bits=6.0)
    assert pooled.threshold < c.threshold and pooled.worst_prompt_bits == pytest.approx(pooled.bits)
    assert c.bits < pooled.bits <= 6.0


def test_threshold_for_an_error_budget_and_an_unreachable_target():
    d = _decisions()
    c = choose_threshold(d, 4.5, 8.0, error_budget=0.3)
    safe = d.predicted > c.threshold
    err = float((d.weight * torch.where(safe, d.err_safe, d.err_low)).sum() / d.weight.sum())
    assert c.met and err <= 0.3 and err == pytest.approx(c.mean_error)
    looser = choose_threshold(d, 4.5, 8.0, error_budget=0.4)
    assert looser.bits <= c.bits
    low = choose_threshold(d, 4.5, 8.0, target_bits=4.5)  # the forced first steps alone exceed it
    assert not low.met and (d.predicted > low.threshold).sum() == 40


# ------------------------------------------------------------------ routing


def _predictor(threshold=0.1, kind="dynamic") -> Predictor:
    layer = LayerPredictor("t.blocks.0", alpha=1.0, beta=0.0, r2=1.0, resid_std=0.0, n=10, in_features=16)
    return Predictor({"t.blocks.0.proj": layer}, threshold=threshold, kind=kind)


def test_route_rules():
    p = _predictor(0.1)
    assert p.route("t.blocks.0.proj", None) == "int8"       # no Γ: first step / after a skip
    assert p.route("t.blocks.0.proj", 0.05) == "nvfp4"
    assert p.route("t.blocks.0.proj", 0.2) == "int8"
    assert _predictor(0.1, "static").route("t.blocks.0.proj", None) == "nvfp4"  # static: no Γ needed


def test_predictor_json_round_trip(tmp_path):
    p = _predictor()
    p.layers["t.blocks.0.proj"].r2 = float("nan")
    p.save(tmp_path / "p.json")
    q = Predictor.load(tmp_path / "p.json")
    assert q.threshold == p.threshold and math.isnan(q.layers["t.blocks.0.proj"].r2)
    assert json.loads((tmp_path / "p.json").read_text())["version"] == 1


# ------------------------------------------------------------------ the runtime hook on a fake block


def _hooked(predictor=None, tdc=TDCConfig(tau=0.05, max_skips=2)):
    block, state, stats = FakeBlock(), ForwardState(num_steps=20), RuntimeStats()
    hook = SixBitBlockHook(state, {"t.blocks.0.proj": block.proj}, predictor, tdc, stats)
    HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, "dq_6bit_block")
    return block, state, stats


def _run(block, state, steps, branch="cond", expert="transformer", delta=None):
    """Run the block over `steps`; returns per step (skipped?, route taken, output)."""
    out = []
    for step in steps:
        state.step, state.branches, state.expert = step, (branch,), expert
        if delta is not None:
            block.delta = delta(step)
        calls, block.proj.last_route = block.calls, None
        y = block(torch.ones(1, 4, 16))
        out.append((block.calls == calls, block.proj.last_route, y))
    return out


def test_tdc_never_skips_more_than_max_in_a_row_and_reuses_the_cached_delta():
    block, state, stats = _hooked()
    block.delta = torch.full((1, 4, 16), 0.25)   # a perfectly stable residual
    run = _run(block, state, range(8))
    assert [s for s, _, _ in run] == [False, False, True, True, False, True, True, False]
    for skipped, _, y in run:
        assert torch.equal(y, torch.ones(1, 4, 16) + 0.25)
    assert (stats.block_evals, stats.block_skips) == (8, 4)
    block, state, _ = _hooked(tdc=TDCConfig(tau=0.05, max_skips=0))
    assert not any(s for s, _, _ in _run(block, state, range(6)))


def test_tdc_does_not_skip_a_changing_block():
    block, state, _ = _hooked()
    run = _run(block, state, range(6), delta=lambda t: torch.full((1, 4, 16), 0.1 * (t + 1)))
    assert not any(s for s, _, _ in run)


def test_tdc_resets_at_the_expert_switch():
    block, state, _ = _hooked()
    block.delta = torch.full((1, 4, 16), 0.25)
    first = _run(block, state, range(4), expert="transformer")
    second = _run(block, state, range(4, 8), expert="transformer_2")
    assert [s for s, _, _ in first] == [False, False, True, True]
    # The new expert starts over: two computed steps before it may skip.
    assert [s for s, _, _ in second] == [False, False, True, True]


def test_tdc_releases_the_other_experts_cache_at_the_switch():
    """Wan 2.2's experts are two transformers, each block with its own hook: when the second expert
    starts, the first one's blocks, never called again in that run, must not keep their Δ."""
    state, stats, peers = ForwardState(num_steps=20), RuntimeStats(), []
    blocks = {}
    for expert in ("transformer", "transformer_2"):
        block = FakeBlock()
        block.delta = torch.full((1, 4, 16), 0.25)
        hook = SixBitBlockHook(state, {f"{expert}.blocks.0.proj": block.proj}, None,
                               TDCConfig(tau=0.05, max_skips=2), stats, peers)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, "dq_6bit_block")
        blocks[expert] = (block, hook)
    first, first_hook = blocks["transformer"]
    for branch in ("cond", "uncond"):
        _run(first, state, range(3), branch, expert="transformer")
    assert len(first_hook.states) == 2 and all(s.delta is not None for s in first_hook.states.values())
    second, second_hook = blocks["transformer_2"]
    run = _run(second, state, range(3, 6), expert="transformer_2")
    assert first_hook.states == {} and len(second_hook.states) == 1
    assert [s for s, _, _ in run] == [False, False, True]  # the new expert's own stream, as before


def test_tdc_keeps_cfg_branches_apart():
    block, state, _ = _hooked()
    cond, uncond = [], []
    for step in range(6):
        cond += _run(block, state, [step], "cond", delta=lambda t: torch.full((1, 4, 16), 0.25))
        # The unconditional branch changes every step: it must never skip, nor disturb cond.
        uncond += _run(block, state, [step], "uncond", delta=lambda t: torch.full((1, 4, 16), -0.1 * (t + 1)))
    assert [s for s, _, _ in cond] == [False, False, True, True, False, True]
    assert not any(s for s, _, _ in uncond)
    for skipped, _, y in cond:
        assert torch.equal(y, torch.ones(1, 4, 16) + 0.25)  # cond's own Δ, never uncond's


def test_routes_first_step_and_after_a_skip_take_int8():
    # Γ of this block is 0.25 (Δ = 0.25 on an all-ones input): above 0.1 → int8, below 0.5 → nvfp4.
    block, state, stats = _hooked(_predictor(threshold=0.5))
    block.delta = torch.full((1, 4, 16), 0.25)
    run = _run(block, state, range(6))
    assert [(s, r) for s, r, _ in run] == [(False, "int8"), (False, "nvfp4"), (True, None), (True, None),
                                           (False, "int8"), (True, None)]
    assert stats.route_calls == {"int8": 2, "nvfp4": 1}
    assert stats.average_bits == pytest.approx((8 + 8 + 4.5) / 3)
    block, state, _ = _hooked(_predictor(threshold=0.1), tdc=None)
    block.delta = torch.full((1, 4, 16), 0.25)  # Γ = 0.25 > 0.1 every step, never skipped without TDC
    assert [r for _, r, _ in _run(block, state, range(3))] == ["int8", "int8", "int8"]
    block.delta = torch.zeros(1, 4, 16)         # Γ = 0 from now: the next step goes to NVFP4
    assert [r for _, r, _ in _run(block, state, range(3, 6))] == ["int8", "nvfp4", "nvfp4"]


def test_refresh_runs_outlier_layers_in_16_bits():
    block, state, stats = _hooked(_predictor(threshold=0.5), TDCConfig(tau=0.05, max_skips=1, refresh_ratio=1.5))
    block.delta = torch.full((1, 4, 16), 0.25)
    x = torch.ones(1, 4, 16)
    x[0, 0, 0] = 10.0                                    # max|X|/mean|X| ≈ 6.9 > 1.5
    routes = []
    for step in range(4):
        state.step = step
        block.proj.last_route = None
        block(x)
        routes.append(block.proj.last_route)
    # computed, computed, skipped, refresh: the step after the skip runs the outlier layer unquantized.
    assert routes == ["int8", "nvfp4", None, "none"]


def test_simulated_tdc_matches_the_runtime_rule():
    changes = torch.tensor([float("nan"), 0.5, 0.01, 0.01, 0.01, 0.01, 0.01, 0.2, 0.2])
    skipped = simulate(changes, TDCConfig(tau=0.05, max_skips=2))
    assert skipped.tolist() == [False, False, False, True, True, False, True, True, False]


# ------------------------------------------------------------------ the CLI flow on a tiny Wan 2.2 (two experts)


@pytest.fixture(scope="module")
def sixbit(family_dir, tmp_path_factory):
    folder, tmp = family_dir("wan"), tmp_path_factory.mktemp("sixbit")
    data = recipe_data("wan", folder, calibration={"steps": 4, "step_ranges": 2, "num_prompts": 2},
                       sampling={"steps": 5},
                       quantization={"default": {"method": "rtn", "weight": "nvfp4", "activation": "nvfp4"}},
                       predictor={"target_bits": 6.5, "routes": ["nvfp4", "int8"]},
                       tdc={"enabled": True, "tau": 5.0, "max_skips": 1})
    recipe = write_recipe(tmp / "recipe.yaml", data)
    run_dq("calibrate", "-r", recipe, "-o", tmp / "calib", "-q")
    fit = run_dq("predictor-fit", "-r", recipe, "-c", tmp / "calib", "-o", tmp / "pred.json")
    run_dq("quantize", "-r", recipe, "-o", tmp / "model.safetensors", "--predictor", tmp / "pred.json", "-q")
    gen = run_dq("generate", "-c", tmp / "model.safetensors", "-r", recipe, "-p", "a cat dancing in the rain",
                 "-o", tmp / "video.mp4")
    return SimpleNamespace(tmp=tmp, recipe=recipe, fit=fit, gen=gen, data=data)


def test_calibration_records_trajectories_per_expert(sixbit):
    from dq_calib.artifact import load_calibration

    cal = load_calibration(sixbit.tmp / "calib")
    t = cal.trajectories
    assert t.prompts == 2 and t.steps == 4 and t.routes == ["nvfp4", "int8"]
    assert t.blocks == ["transformer.blocks.0", "transformer.blocks.1", "transformer_2.blocks.0",
                        "transformer_2.blocks.1"]
    assert len(t.linears) == 2 * 2 * 10 and t.erel.shape == (2, 4, 2, 40, 2)
    steps = cal.summary["steps_by_expert"]
    ran = torch.isfinite(t.gamma[0, :, 0])                  # [steps, blocks]
    for s in range(4):
        expert = "transformer" if s in steps["transformer"] else "transformer_2"
        assert ran[s].tolist() == [expert == "transformer"] * 2 + [expert == "transformer_2"] * 2
    # Every quantized block linear, both branches and routes, exactly where its block ran.
    block_ran = torch.isfinite(t.gamma)[..., torch.tensor(t.linear_block)]          # [P, S, Br, L]
    assert torch.equal(torch.isfinite(t.erel), block_ran.unsqueeze(-1).expand_as(t.erel))
    assert block_ran.any(1).all()                                                   # each ran somewhere
    e = t.erel[torch.isfinite(t.erel[..., 0])]
    assert (e[:, 1] < e[:, 0]).float().mean() > 0.9       # INT8 activations: less error than NVFP4


def test_predictor_fit_and_generate_need_not_find_the_recipes_model(sixbit, tmp_path):
    """predictor-fit reads everything from the artifact and generate with a checkpoint builds the model
    from it: neither needs the recipe's model folder (a recipe written on another machine), while
    calibrate, which loads the model, still refuses it by name."""
    data = {**sixbit.data, "model": {**sixbit.data["model"], "path": str(tmp_path / "elsewhere")}}
    recipe = write_recipe(tmp_path / "moved.yaml", data)
    run_dq("predictor-fit", "-r", recipe, "-c", sixbit.tmp / "calib", "-o", tmp_path / "p.json", "-q")
    fitted = lambda path: json.loads(path.read_text())["layers"]  # noqa: E731
    assert fitted(tmp_path / "p.json") == fitted(sixbit.tmp / "pred.json")
    gen = run_dq("generate", "-c", sixbit.tmp / "model.safetensors", "-r", recipe, "-p", "a cat", "--steps", 2,
                 "-o", tmp_path / "v.mp4")
    assert "(2 steps" in gen.stderr
    refused = run_dq("calibrate", "-r", recipe, "-o", tmp_path / "calib", code=2)
    assert "model.path" in refused.stderr and "elsewhere" in refused.stderr and not (tmp_path / "calib.json").exists()


def test_a_predictor_only_goes_with_the_recipe_it_was_fitted_for(sixbit, tmp_path, monkeypatch):
    """quantize and generate refuse a predictor for a recipe without a predictor section (a 6Bit
    predictor on a W8A8 model was taken and routed its layers) or with other routes; quantize finds
    predictor-fit's default output by itself, and says when there is none."""
    import shutil

    pred = sixbit.tmp / "pred.json"
    w8a8 = write_recipe(tmp_path / "w8a8.yaml", {k: v for k, v in sixbit.data.items() if k not in ("predictor", "tdc")}
                        | {"quantization": {"default": {"method": "rtn", "weight": "int8", "activation": "int8"}}})
    r = run_dq("quantize", "-r", w8a8, "--predictor", pred, "-o", tmp_path / "w8a8.safetensors", code=2)
    assert "w8a8.yaml has no predictor section" in r.stderr and not (tmp_path / "w8a8.safetensors").exists()
    run_dq("quantize", "-r", w8a8, "-o", tmp_path / "w8a8.safetensors", "-q")
    r = run_dq("generate", "-c", tmp_path / "w8a8.safetensors", "--predictor", pred, "-p", "a cat", "-o",
               tmp_path / "v.mp4", code=2)
    assert "the checkpoint's recipe has no predictor section" in r.stderr and not (tmp_path / "v.mp4").exists()
    other = write_recipe(tmp_path / "other.yaml", {**sixbit.data, "predictor": {**sixbit.data["predictor"],
                                                                               "routes": ["deltaquant", "int8"]}})
    r = run_dq("quantize", "-r", other, "--predictor", pred, "-o", tmp_path / "o.safetensors", code=2)
    assert "the predictor routes nvfp4/int8 while" in r.stderr and "other.yaml routes deltaquant/int8" in r.stderr

    monkeypatch.chdir(tmp_path)
    none = run_dq("quantize", "-r", sixbit.recipe, "-o", tmp_path / "a.safetensors")
    assert "no predictor (--predictor, or out/recipe-predictor.json" in none.stderr
    (tmp_path / "out").mkdir()
    shutil.copy(pred, tmp_path / "out" / "recipe-predictor.json")
    found = run_dq("quantize", "-r", sixbit.recipe, "-o", tmp_path / "b.safetensors")
    assert "predictor out/recipe-predictor.json: dynamic routing" in found.stderr


def test_predictor_fit_reports_and_writes_versioned_predictor(sixbit):
    doc = json.loads((sixbit.tmp / "pred.json").read_text())
    assert doc["format"] == "dq-predictor" and doc["version"] == 1 and doc["kind"] == "dynamic"
    # 4 steps: the first, and transformer_2's first (a new expert has no Γ(t−1)), are forced to INT8:
    # 6.25 bits before any choice; 6.5 leaves room for some.
    assert len(doc["layers"]) == 40 and 6.25 < doc["achieved"]["bits"] <= 6.5 + 1e-9
    assert doc["achieved"]["target_met"] and doc["target_bits"] == 6.5
    text = sixbit.fit.stderr
    assert "median R²" in text and "int8" in text and "bits on average" in text
    for png in ("gamma_vs_error.png", "bit_map.png", "delta_similarity.png"):
        assert (sixbit.tmp / "pred-plots" / png).read_bytes()[:4] == b"\x89PNG"


def states_held(adapter) -> dict[str, int]:
    """TDC states held by each transformer's block hooks."""
    from dq_cli.quant.runtime import RUNTIME_HOOK, transformer_blocks

    return {name: sum(len(HookRegistry.check_if_exists_or_initialize(b).get_hook(RUNTIME_HOOK).states)
                      for _, b in transformer_blocks(model))
            for name, model in adapter.transformers().items()}


def held_per_step(adapter, run) -> list[tuple[str, dict[str, int]]]:
    """Generate once more: (expert, `states_held`) read after each step."""
    held = []
    adapter.generate("a cat", steps=run.steps, guidance=run.guidance, seed=0, frames=run.frames,
                     height=run.height, width=run.width,
                     on_step=lambda info: held.append((info.expert, states_held(adapter))))
    return held


def test_generate_routes_per_step_and_reports_the_mix(sixbit):
    from dq_cli.checkpoint import read_info

    info = read_info(sixbit.tmp / "model.safetensors")
    assert info.predictor["format"] == "dq-predictor"
    assert "bits on average" in sixbit.gen.stderr and "TDC skipped" in sixbit.gen.stderr
    from dq_cli.session import load_quantized, sampling

    adapter, _ = load_quantized(sixbit.tmp / "model.safetensors", "cpu")
    run = sampling(adapter, None, **{k: sixbit.data["sampling"][k] for k in ("steps", "frames", "height", "width")},
                   guidance=sixbit.data["sampling"]["guidance"])
    experts = []
    adapter.generate("a cat", steps=run.steps, guidance=run.guidance, seed=0, frames=run.frames,
                     height=run.height, width=run.width, on_step=lambda info: experts.append(info.expert))
    s = adapter.runtime.summary()
    # τ = 5 (everything is stable enough) with max 1 skip: a stream of n steps computes two, then
    # alternates skip / compute: (n − 1) // 2 skips. Each expert is its own stream per block and branch
    # (the count restarts at the switch).
    per_expert = [experts.count(e) for e in ("transformer", "transformer_2")]
    assert len(experts) == 5 and min(per_expert) >= 1
    assert s["block_evals"] == 5 * 2 * 2
    assert s["block_skips"] == sum(2 * 2 * ((n - 1) // 2) for n in per_expert) > 0
    assert set(s["route_calls"]) <= {"int8", "nvfp4"} and s["route_calls"]["int8"] > 0
    # After each step, the states the blocks hold: the running expert's, and after the switch none
    # of the first expert's (released, not kept for a run that never returns to it).
    held = held_per_step(adapter, run)
    assert [e for e, _ in held] == experts
    for expert, counts in held:
        other = "transformer_2" if expert == "transformer" else "transformer"
        assert counts[expert] > 0 and counts[other] == 0
    # The weights are stored once: no QuantLinear holds more than the packed NVFP4 tensors.
    for m in adapter.transformers()["transformer"].modules():
        if isinstance(m, QuantLinear):
            assert set(m.tensor_names) == {"qweight", "block_scales", "tensor_scale"}


def test_predictor_fit_errors_name_the_file_and_key(sixbit, tmp_path, family_dir):
    result = run_dq("predictor-fit", "-r", "tiny_w4a4.yaml", "-c", sixbit.tmp / "calib", "-o", tmp_path / "p.json",
                    code=2)
    assert "predictor" in result.stderr and "no predictor section" in result.stderr
    # A calibration made without the predictor section has no trajectories.
    plain = write_recipe(tmp_path / "plain.yaml", {k: v for k, v in sixbit.data.items() if k not in ("predictor", "tdc")})
    run_dq("calibrate", "-r", plain, "-o", tmp_path / "plain-calib", "-q", "-n", "1")
    result = run_dq("predictor-fit", "-r", sixbit.recipe, "-c", tmp_path / "plain-calib", "-o", tmp_path / "p.json",
                    code=2)
    assert "plain-calib.json" in result.stderr and "trajectories" in result.stderr
    result = run_dq("predictor-fit", "-r", sixbit.recipe, "-c", tmp_path / "absent", "-o", tmp_path / "p.json", code=2)
    assert "absent.json" in result.stderr
    assert not (tmp_path / "p.json").exists()


# ------------------------------------------------------------------ online block Hadamard


def test_block_hadamard_is_orthonormal_and_its_own_inverse():
    from dq_kernels.hadamard import block_hadamard, hadamard_matrix

    h = hadamard_matrix(8)
    assert torch.allclose(h @ h.T, torch.eye(8), atol=1e-6) and torch.equal(h, h.T)
    x = torch.randn(3, 32)
    assert torch.allclose(block_hadamard(block_hadamard(x, 8), 8), x, atol=1e-5)
    with pytest.raises(ValueError, match="power of two"):
        hadamard_matrix(12)


def test_hadamard_plan_keeps_the_product_and_smooths_an_outlier_channel():
    from dataclasses import replace

    torch.manual_seed(0)
    linear = nn.Linear(40, 24)  # K = 40: padded to 64 for blocks of 32
    x = torch.randn(2, 64, 40)
    x[..., 3] *= 40.0           # one outlier channel
    y = linear(x)
    exact = replace(NVFP4_PLAN, weight="bf16", activation="none", hadamard=32)
    rotated = QuantLinear.from_linear(linear, exact, "l")
    assert torch.allclose(rotated(x), y, rtol=2e-2, atol=2e-2)  # bf16 weights of the rotated matrix
    assert torch.allclose(rotated.residual_weight(), linear.weight, atol=1e-2)
    # Per-token INT8: the outlier sets every channel's step; rotated, it is spread over its block.
    # (NVFP4's own 16-element scales already isolate an outlier: there the rotation does not help.)
    int8 = replace(NVFP4_PLAN, weight="bf16", activation="int8")
    err = {b: rel_error(QuantLinear.from_linear(linear, replace(int8, hadamard=b), "l")(x), y).max().item()
           for b in (0, 32)}
    assert err[32] < 0.5 * err[0]


def test_deltaquant_route_uses_the_cube_split_on_the_same_weights():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    q = QuantLinear.from_linear(linear, NVFP4_PLAN, "l")
    q.forward_state = ForwardState(grid=(4, 4, 8), in_forward=True)
    # Neighbouring tokens share a large common part: what DeltaQuant's core tokens take out.
    x = torch.randn(1, 1, 64) * 5 + 0.2 * torch.randn(1, 128, 64)
    y = linear(x)
    err = {}
    for route in ("nvfp4", "deltaquant", "int8"):
        q.route = route
        err[route] = rel_error(q(x), y).item()
        assert q.last_route == route
    assert err["deltaquant"] < err["nvfp4"]
    assert set(q.tensor_names) == {"qweight", "block_scales", "tensor_scale"}


def test_runtime_counts_each_generation_apart():
    stats = RuntimeStats()
    stats.count_route("int8", 64)
    stats.count_route("nvfp4", 64)
    stats.end_run()
    stats.count_route("nvfp4", 128)
    stats.end_run()
    stats.end_run()  # a run with no routed layer adds nothing
    assert stats.run_bits == [pytest.approx((8 + 4.5) / 2), pytest.approx(4.5)]
    s = stats.summary()
    assert s["max_run_bits"] == pytest.approx(6.25) and s["average_bits"] == pytest.approx((8 + 3 * 4.5) / 4)
    stats.reset()
    stats.count_route("int8", 1)
    stats.end_run()
    assert stats.run_bits == [8.0]


def test_threshold_falls_back_to_the_average_when_a_prompt_cannot_meet_it():
    # Prompt 0's forced (+inf) evaluations alone put it at 8 bits: no cut meets 6.0 on every prompt,
    # so the target is met on the pooled average, and the choice says which.
    n = 200
    prompt = torch.arange(n) // 100
    pred = torch.linspace(0, 1, n, dtype=torch.float64)
    pred[:100] = math.inf
    d = Decisions(pred, torch.ones(n, dtype=torch.float64), pred, pred, torch.zeros(n, dtype=torch.long),
                  torch.zeros(n, dtype=torch.long), prompt)
    c = choose_threshold(d, 4.5, 8.0, target_bits=6.5)
    assert c.met and not c.every_prompt
    assert c.bits <= 6.5 and c.worst_prompt_bits == pytest.approx(8.0)
    safe = d.predicted > c.threshold
    assert safe[:100].all() and 0 < int(safe[100:].sum()) < 100  # the rest spends the average


def test_predictor_fit_budget_tdc_false_fits_as_without_tdc(sixbit, tmp_path):
    """`predictor.budget_tdc: false`: the threshold ignores TDC's skips (the INT8 steps they force
    come on top), so it is the threshold of the same recipe with TDC off."""
    off = write_recipe(tmp_path / "off.yaml", {**sixbit.data, "tdc": {**sixbit.data["tdc"], "enabled": False}})
    unbudgeted = write_recipe(tmp_path / "unbudgeted.yaml",
                              {**sixbit.data, "predictor": {**sixbit.data["predictor"], "budget_tdc": False}})
    for recipe, name in ((off, "off"), (unbudgeted, "unbudgeted")):
        run_dq("predictor-fit", "-r", recipe, "-c", sixbit.tmp / "calib", "-o", tmp_path / f"{name}.json", "-q")
    docs = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("off", "unbudgeted")}
    budgeted = json.loads((sixbit.tmp / "pred.json").read_text())
    assert docs["unbudgeted"]["threshold"] == docs["off"]["threshold"]
    assert docs["unbudgeted"]["achieved"]["tdc_skip_estimate"] is None
    assert budgeted["achieved"]["tdc_skip_estimate"] is not None  # the default counts TDC's replay


def test_generate_compiled_gives_the_eager_video_with_the_same_routes_and_skips(sixbit, monkeypatch):
    """`--compile on` with 6Bit-Diffusion: the block hook keeps deciding routes and TDC skips in
    Python, the blocks' own forwards are compiled beneath it and the routed linears run eagerly
    between the pieces. So the video, the route mix and the skips are the eager run's, and a new
    route mix does not recompile: after a one-step run (every layer on INT8: no Γ yet), a whole run
    (NVFP4 and INT8 mixes, TDC skips) adds no graph. CUDA graphs (reduce-overhead), never run with
    the eager pieces between them, are refused by name."""
    import numpy as np
    import torch._dynamo
    from torch._dynamo.utils import counters

    from dq_cli.compile import RegionalCompile
    from dq_cli.session import load_quantized, sampling

    monkeypatch.setenv("DQ_COMPILE_BACKEND", "aot_eager")  # no C++ compiler needed
    base = ("generate", "-c", sixbit.tmp / "model.safetensors", "-r", sixbit.recipe, "-p", "a cat dancing in the rain")
    eager = run_dq(*base, "-o", sixbit.tmp / "e.mp4", "--save-frames", sixbit.tmp / "e.npy")
    compiled = run_dq(*base, "-o", sixbit.tmp / "c.mp4", "--save-frames", sixbit.tmp / "c.npy", "--compile", "on")
    assert np.array_equal(np.load(sixbit.tmp / "c.npy"), np.load(sixbit.tmp / "e.npy"))
    mix = [line for line in eager.stderr.splitlines() if "bits on average" in line]
    assert mix and mix == [line for line in compiled.stderr.splitlines() if "bits on average" in line]
    assert "graph breaks (6Bit's routed linears run eagerly between the pieces)" in compiled.stderr
    assert " 0 graph breaks" not in compiled.stderr
    graphs = run_dq(*base, "-o", sixbit.tmp / "g.mp4", "--compile", "reduce-overhead", code=2)
    assert "not with 6Bit-Diffusion's per-step routing" in graphs.stderr and not (sixbit.tmp / "g.mp4").exists()

    adapter, _ = load_quantized(sixbit.tmp / "model.safetensors", "cpu")
    run = sampling(adapter, None, **{k: sixbit.data["sampling"][k] for k in ("steps", "frames", "height", "width")},
                   guidance=sixbit.data["sampling"]["guidance"])
    with RegionalCompile(adapter, "aot_eager"):
        summaries, graphs = [], []
        for steps in (1, run.steps):
            adapter.runtime.reset()
            adapter.generate("a cat", steps=steps, guidance=run.guidance, seed=3, frames=run.frames,
                             height=run.height, width=run.width)
            summaries.append(adapter.runtime.summary())
            graphs.append(counters["stats"]["unique_graphs"])
    assert set(summaries[0]["route_calls"]) == {"int8"} and summaries[0]["block_skips"] == 0
    assert summaries[1]["route_calls"]["nvfp4"] > 0 and summaries[1]["block_skips"] > 0
    assert graphs[0] == graphs[1] > 0
    torch._dynamo.reset()
