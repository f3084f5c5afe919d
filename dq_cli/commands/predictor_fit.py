"""dq predictor-fit: fit 6Bit-Diffusion's Γ→error regressions and choose the routing threshold."""

from __future__ import annotations

from pathlib import Path

import typer

from dq_cli import recipe as recipes
from dq_cli.commands.common import (QUIET_OPTION, RECIPE_OPTION, check_writable, console, counted, default_output,
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
    from dq_calib.artifact import ArtifactError, artifact_paths, load_calibration
    from dq_cli import predictor_fit as lib

    spec = recipes.load(recipe, check=False)  # the statistics are in the artifact: no model is loaded
    source = recipes.resolve(recipe)[0]
    if spec.predictor is None:
        raise RecipeError(source, "predictor", "the recipe has no predictor section (target_bits, routes); "
                                               "see recipes/tiny_6bit.yaml")
    if spec.predictor.target_bits is None and spec.predictor.error_budget is None:
        raise RecipeError(source, "predictor.target_bits", "give target_bits or error_budget")
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
    with progress_bar(quiet, "fitting predictor", 4) as advance:
        result = lib.fit(spec, cal, json_path, static=static, advance=advance)
        files, drawn = lib.draw(result, cal.trajectories, plots, advance=advance)
    result.predictor.save(out)
    _report(result, spec, cal.trajectories, static, files, drawn, quiet)
    console.print(f"wrote {out}") if not quiet else typer.echo(str(out))


def _report(result, spec, traj, static: bool, files: dict, drawn: int, quiet: bool) -> None:
    from dq_calib.predictor import SAFE_ROUTE

    choice, fitted, goal, low_route = result.choice, result.dynamic_fits, result.goal, result.low_route
    ranked = sorted((n for n in fitted if fitted[n].r2 == fitted[n].r2), key=lambda n: -fitted[n].r2)
    note(quiet, f"{len(result.predictor.layers)} layers, {result.decisions.predicted.numel()} layer evaluations "
                f"({counted(traj.prompts, 'prompt')} × {counted(traj.steps, 'step')} × branches)")
    note(quiet, f"regressions E_rel(t) ≈ α·Γ(t−1) + β ({low_route}): median R² "
                f"{result.predictor.achieved['median_r2']:.3f}"
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
    kind, other_kind = ("static mix", "dynamic routing") if static else ("dynamic routing", "static mix")
    note(quiet, f"{kind}, {goal}: threshold {choice.threshold:.4g} on the predicted error → "
                f"{SAFE_ROUTE} {100 * choice.safe_fraction:.1f}%, {low_route} {100 * (1 - choice.safe_fraction):.1f}%, "
                f"{choice.bits:.3f} bits on average ({choice.worst_prompt_bits:.3f} on the calibration prompt "
                f"with the most), mean E_rel {choice.mean_error:.4f}")
    note(quiet, f"{other_kind} at the same {goal}: {result.other.bits:.3f} bits, mean E_rel "
                f"{result.other.mean_error:.4f} (calibration set)")
    if result.tdc_skip_estimate is not None:
        note(quiet, f"TDC at tau {spec.tdc.tau:g}, max {spec.tdc.max_skips} skips: would skip "
                    f"{100 * result.tdc_skip_estimate:.1f}% of block evaluations on the calibration trajectories "
                    "(counted in the bits above)")
    elif spec.tdc.enabled:
        note(quiet, "TDC is on and predictor.budget_tdc is false: the threshold ignores its skips; the "
                    f"{SAFE_ROUTE} steps they force come on top of the bits above")
    note(quiet, f"plots: {', '.join(str(f) for f in files.values())} (scatter: {drawn} layers)")
