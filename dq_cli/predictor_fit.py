"""6Bit-Diffusion's predictor from a calibration artifact: per-layer regressions E_rel(t) ≈ α·Γ(t−1) + β,
the routing threshold that meets the recipe's target bits (or error budget), and the other kind of
predictor (static mix / dynamic routing) at the same target for comparison. `dq predictor-fit`
writes and prints what `fit` returns; `draw` makes its plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dq_calib.predictor import (ROUTE_BITS, SAFE_ROUTE, Choice, Decisions, LayerPredictor, Predictor,
                                choose_threshold, decisions, fit_layers, median_r2)
from dq_cli.errors import DQError
from dq_cli.recipe import Recipe


@dataclass
class PredictorFit:
    predictor: Predictor
    decisions: Decisions       # the chosen kind's, on the calibration trajectories
    choice: Choice
    dynamic_fits: dict[str, LayerPredictor]  # the regressions (the static kind's comparison when static)
    other: Choice              # the other kind at the same target
    low_route: str
    tdc_skip_estimate: float | None  # the share of block evaluations TDC would skip, when budgeted

    @property
    def goal(self) -> str:
        p = self.predictor
        return f"target {p.target_bits:.2f} bits" if p.target_bits is not None else f"error budget {p.error_budget:g}"


def low_route_of(recipe: Recipe) -> str:
    return "deltaquant" if "deltaquant" in recipe.predictor.routes else "nvfp4"


def check_trajectories(traj, json_path: Path, low_route: str) -> None:
    """The artifact holds what a fit needs: trajectories of both routes, for at least one layer."""
    if traj is None:
        raise DQError(f"{json_path}: no 'trajectories' (Γ and E_rel per step): run `dq calibrate` with a recipe "
                      "that has a predictor section")
    for route in (low_route, SAFE_ROUTE):
        if route not in traj.routes:
            raise DQError(f"{json_path}: trajectories.routes is {traj.routes}, without '{route}': calibrate again "
                          f"with predictor.routes listing {low_route} and {SAFE_ROUTE}")
    if not traj.linears:
        raise DQError(f"{json_path}: trajectories.linears is empty: the recipe quantizes no layer inside the blocks")


def fit(recipe: Recipe, cal, json_path: Path, static: bool = False,
        advance: Callable[[], None] = lambda: None) -> PredictorFit:
    """Fit the recipe's predictor on a loaded calibration artifact (`advance` after each of two stages).
    With TDC on and `predictor.budget_tdc`, the bits are counted as TDC will run: skipped block-steps
    run no layer, and the step after a skip takes the safe route (replayed on the trajectories)."""
    pspec, traj = recipe.predictor, cal.trajectories
    low_route = low_route_of(recipe)
    check_trajectories(traj, json_path, low_route)
    budget = pspec.error_budget
    target = None if budget is not None else pspec.target_bits
    low_bits, safe_bits = ROUTE_BITS[low_route], ROUTE_BITS[SAFE_ROUTE]
    in_features = {name: d["in_features"] for name, d in cal.summary.get("layers", {}).items()}
    skipped = tdc_skips(traj, recipe) if recipe.tdc.enabled and pspec.budget_tdc else None
    tdc_estimate = float(skipped[torch.isfinite(traj.gamma)].float().mean()) if skipped is not None else None

    def fit_kind(kind_static: bool):
        layers = fit_layers(traj, low_route, in_features, static=kind_static)
        d = decisions(traj, layers, low_route, static=kind_static, skipped=skipped)
        return layers, d, choose_threshold(d, low_bits, safe_bits, target_bits=target, error_budget=budget)

    layers, d, choice = fit_kind(static)
    advance()
    other_layers, _, other = fit_kind(not static)
    advance()
    dynamic_fits = other_layers if static else layers
    achieved = {"bits": choice.bits, "worst_prompt_bits": choice.worst_prompt_bits,
                "safe_fraction": choice.safe_fraction, "mean_error": choice.mean_error, "target_met": choice.met,
                "target_met_every_prompt": choice.every_prompt, "median_r2": median_r2(dynamic_fits),
                "calibration": str(json_path), "tdc_skip_estimate": tdc_estimate}
    predictor = Predictor(layers=layers, threshold=choice.threshold, low_route=low_route, safe_route=SAFE_ROUTE,
                          kind="static" if static else "dynamic", target_bits=target, error_budget=budget,
                          achieved=achieved)
    return PredictorFit(predictor, d, choice, dynamic_fits, other, low_route, tdc_estimate)


def draw(result: PredictorFit, traj, folder: Path,
         advance: Callable[[], None] = lambda: None) -> tuple[dict[str, Path], int]:
    """The PNGs: Γ(t−1) vs E_rel(t) with the fitted lines of the best- and worst-predicted layers,
    the bit-width map (layers × steps) and the Δ-similarity heat map (blocks × steps). Returns the
    files and how many layers the scatter shows."""
    from dq_calib import plots

    folder.mkdir(parents=True, exist_ok=True)
    p = result.predictor
    files = {name: folder / f"{name}.png" for name in ("gamma_vs_error", "bit_map", "delta_similarity")}
    drawn = plots.scatter_fits(files["gamma_vs_error"], traj, result.dynamic_fits, result.low_route)
    plots.bit_map(files["bit_map"], traj, result.decisions, p.threshold, ROUTE_BITS[p.low_route],
                  ROUTE_BITS[p.safe_route])
    advance()
    plots.delta_similarity(files["delta_similarity"], traj)
    advance()
    return files, len(drawn)


def tdc_skips(traj, recipe: Recipe) -> torch.Tensor:
    """[P, S, Br, B] bool: the block-steps TDC would skip, replayed on the measured Δ changes."""
    from dq_cli.quant.tdc import TDCConfig, simulate

    cfg = TDCConfig(recipe.tdc.tau, recipe.tdc.max_skips)
    skipped = torch.zeros(traj.gamma.shape, dtype=torch.bool)
    for p in range(traj.prompts):
        for b in range(len(traj.branches)):
            for k in range(len(traj.blocks)):
                mask = torch.isfinite(traj.gamma[p, :, b, k])  # the steps this block ran (its expert's)
                if mask.any():
                    skipped[p, mask, b, k] = simulate(traj.delta_rel_l1[p, mask, b, k], cfg)
    return skipped
