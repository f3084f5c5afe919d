"""dq predictor-fit: fit 6Bit-Diffusion's Γ→error regressions and choose the routing threshold."""

from __future__ import annotations

from pathlib import Path

import typer

from dq_cli import recipe as recipes
from dq_cli.commands.common import (QUIET_OPTION, RECIPE_OPTION, check_writable, console, default_output,
                                    handle_errors, note, progress_bar)
from dq_cli.errors import DQError, RecipeError


@handle_errors
def command(
    recipe: str = RECIPE_OPTION,
    calibration: Path = typer.Option(None, "--calibration", "-c", help="Calibration artifact from `dq calibrate` "
                                     "(the .json, the .safetensors or their stem). Default: out/<recipe name>-calib."),
    out: Path = typer.Option(None, "--out", "-o", help="Predictor file to write (.json). "
                             "Default: out/<recipe name>-predictor.json."),
    plots: Path = typer.Option(None, "--plots", help="Folder for the PNGs (default: <out stem>-plots next to it)."),
    static: bool = typer.Option(False, "--static", help="Fit a static per-layer mix instead (α = 0: each layer's "
                                "mean error decides its route for every step), at the same target."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Fit per-layer E_rel(t) ≈ α·Γ(t−1) + β from a calibration artifact and choose the NVFP4/INT8
    routing threshold that meets the recipe's target bit width (or error budget).

    In: a recipe with a `predictor:` section and the artifact of `dq calibrate` run with it. Out: a
    versioned predictor file (.json) for `dq quantize --predictor`, and PNGs: Γ(t−1) vs E_rel(t)
    with the fitted lines of the best- and worst-predicted layers, the bit-width map (layers ×
    steps) and the Δ-similarity heat map (blocks × steps).
    """
    from dq_calib import plots as draw
    from dq_calib.artifact import ArtifactError, artifact_paths, load_calibration
    from dq_calib.predictor import (ROUTE_BITS, SAFE_ROUTE, Predictor, choose_threshold, decisions, fit_layers,
                                    median_r2)

    spec = recipes.load(recipe, check=False)  # the statistics are in the artifact: no model is loaded
    source = recipes.resolve(recipe)[0]
    if spec.predictor is None:
        raise RecipeError(source, "predictor", "the recipe has no predictor section (target_bits, routes); "
                                               "see recipes/tiny_6bit.yaml")
    calibration = calibration or default_output(source, "calibration")
    out = out or default_output(source, "predictor")
    if out.suffix != ".json":
        raise DQError(f"--out {out}: the predictor is written as JSON; give a path ending in .json")
    check_writable(out, "--out")
    plots = plots or out.with_name(out.stem + "-plots")
    try:
        cal = load_calibration(calibration)
    except ArtifactError as e:
        raise DQError(f"--calibration: {e}") from None
    json_path = artifact_paths(calibration)[1]
    traj = cal.trajectories
    if traj is None:
        raise DQError(f"{json_path}: no 'trajectories' (Γ and E_rel per step): run `dq calibrate` with a recipe "
                      "that has a predictor section")
    pspec = spec.predictor
    low_route = "deltaquant" if "deltaquant" in pspec.routes else "nvfp4"
    for route in (low_route, SAFE_ROUTE):
        if route not in traj.routes:
            raise DQError(f"{json_path}: trajectories.routes is {traj.routes}, without '{route}': calibrate again "
                          f"with predictor.routes listing {low_route} and {SAFE_ROUTE}")
    if not traj.linears:
        raise DQError(f"{json_path}: trajectories.linears is empty: the recipe quantizes no layer inside the blocks")

    in_features = {name: d["in_features"] for name, d in cal.summary.get("layers", {}).items()}
    low_bits, safe_bits = ROUTE_BITS[low_route], ROUTE_BITS[SAFE_ROUTE]
    budget = pspec.error_budget
    target = None if budget is not None else pspec.target_bits
    if target is None and budget is None:
        raise RecipeError(source, "predictor.target_bits", "give target_bits or error_budget")
    plots.mkdir(parents=True, exist_ok=True)
    with progress_bar(quiet, "fitting predictor", 4) as advance:
        layers = fit_layers(traj, low_route, in_features, static=static)
        # With TDC on, the bits are counted as it will run: skipped block-steps run no layer, and the
        # step after a skip is forced to the safe route (replayed on the calibration trajectories).
        skipped = _tdc_skips(traj, spec) if spec.tdc.enabled and pspec.budget_tdc else None
        tdc_estimate = float(skipped[_ran(traj)].float().mean()) if skipped is not None else None
        advance()
        d = decisions(traj, layers, low_route, static=static, skipped=skipped)
        choice = choose_threshold(d, low_bits, safe_bits, target_bits=target, error_budget=budget)
        # The other kind at the same target, for comparison on the same calibration set.
        other = fit_layers(traj, low_route, in_features, static=not static)
        other_d = decisions(traj, other, low_route, static=not static, skipped=skipped)
        other_choice = choose_threshold(other_d, low_bits, safe_bits, target_bits=target, error_budget=budget)
        advance()
        drawn = draw.scatter_fits(plots / "gamma_vs_error.png", traj, layers if not static else other, low_route)
        draw.bit_map(plots / "bit_map.png", traj, d, choice.threshold, low_bits, safe_bits)
        advance()
        draw.delta_similarity(plots / "delta_similarity.png", traj)
        advance()
    achieved = {"bits": choice.bits, "worst_prompt_bits": choice.worst_prompt_bits,
                "safe_fraction": choice.safe_fraction, "mean_error": choice.mean_error, "target_met": choice.met,
                "target_met_every_prompt": choice.every_prompt, "median_r2": median_r2(layers if not static else other),
                "calibration": str(json_path), "tdc_skip_estimate": tdc_estimate}
    predictor = Predictor(layers=layers, threshold=choice.threshold, low_route=low_route, safe_route=SAFE_ROUTE,
                          kind="static" if static else "dynamic", target_bits=target, error_budget=budget,
                          achieved=achieved)
    predictor.save(out)

    kind = "static mix" if static else "dynamic routing"
    goal = f"target {target:.2f} bits" if target is not None else f"error budget {budget:g}"
    fitted = layers if not static else other
    ranked = sorted((n for n in fitted if fitted[n].r2 == fitted[n].r2), key=lambda n: -fitted[n].r2)
    note(quiet, f"{len(layers)} layers, {d.predicted.numel()} layer evaluations "
                f"({traj.prompts} prompts × {traj.steps} steps × branches)")
    note(quiet, f"regressions E_rel(t) ≈ α·Γ(t−1) + β ({low_route}): median R² {achieved['median_r2']:.3f}"
                + (f"; best {ranked[0]} ({fitted[ranked[0]].r2:.3f}), worst {ranked[-1]} "
                   f"({fitted[ranked[-1]].r2:.3f})" if ranked else ""))
    if choice.met and not choice.every_prompt:
        console.print(f"[yellow]warning:[/] {goal} cannot be met on every calibration prompt (the steps "
                      f"without Γ(t−1) — the first, an expert's first, those after a TDC skip — take "
                      f"{SAFE_ROUTE}); met on their average instead, {choice.worst_prompt_bits:.3f} bits on "
                      "the prompt with the most")
    if not choice.met:
        console.print(f"[yellow]warning:[/] {goal} cannot be met (the steps without Γ(t−1) — the first, an "
                      f"expert's first, those after a TDC skip — alone take {SAFE_ROUTE}); using the closest mix")
    note(quiet, f"{kind}, {goal}: threshold {choice.threshold:.4g} on the predicted error → "
                f"{SAFE_ROUTE} {100 * choice.safe_fraction:.1f}%, {low_route} {100 * (1 - choice.safe_fraction):.1f}%, "
                f"{choice.bits:.3f} bits on average ({choice.worst_prompt_bits:.3f} on the calibration prompt "
                f"with the most), mean E_rel {choice.mean_error:.4f}")
    other_kind = "dynamic routing" if static else "static mix"
    note(quiet, f"{other_kind} at the same {goal}: {other_choice.bits:.3f} bits, mean E_rel "
                f"{other_choice.mean_error:.4f} (calibration set)")
    if tdc_estimate is not None:
        note(quiet, f"TDC at tau {spec.tdc.tau:g}, max {spec.tdc.max_skips} skips: would skip "
                    f"{100 * tdc_estimate:.1f}% of block evaluations on the calibration trajectories "
                    "(counted in the bits above)")
    elif spec.tdc.enabled:
        note(quiet, "TDC is on and predictor.budget_tdc is false: the threshold ignores its skips; the "
                    f"{SAFE_ROUTE} steps they force come on top of the bits above")
    note(quiet, f"plots: {', '.join(str(plots / n) for n in ('gamma_vs_error.png', 'bit_map.png', 'delta_similarity.png'))}"
                f" (scatter: {len(drawn)} layers)")
    console.print(f"wrote {out}") if not quiet else typer.echo(str(out))


def _ran(traj):
    import torch

    return torch.isfinite(traj.gamma)


def _tdc_skips(traj, spec):
    """[P, S, Br, B] bool: the block-steps TDC would skip, replayed on the measured Δ changes."""
    import torch

    from dq_cli.quant.tdc import TDCConfig, simulate

    cfg = TDCConfig(spec.tdc.tau, spec.tdc.max_skips)
    skipped = torch.zeros(traj.gamma.shape, dtype=torch.bool)
    for p in range(traj.prompts):
        for b in range(len(traj.branches)):
            for k in range(len(traj.blocks)):
                mask = torch.isfinite(traj.gamma[p, :, b, k])   # the steps this block ran (its expert's)
                if mask.any():
                    skipped[p, mask, b, k] = simulate(traj.delta_rel_l1[p, mask, b, k], cfg)
    return skipped
