"""dq quantize: apply a recipe's quantization to a model and write a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from dq_cli import recipe as recipes
from dq_cli.errors import DQError
from dq_cli.commands.common import (DEVICE_OPTION, QUIET_OPTION, RECIPE_OPTION, check_writable, console,
                                    default_output, handle_errors, note, pick_device, progress_bar, set_threads)


@handle_errors
def command(
    recipe: str = RECIPE_OPTION,
    model: str = typer.Option(None, "--model", "-m", help="Local diffusers folder; replaces the recipe's model.path."),
    out: Path = typer.Option(None, "--out", "-o", help="Checkpoint to write (.safetensors). "
                             "Default: out/<recipe name>.safetensors."),
    calibration: Path = typer.Option(None, "--calibration", "-c", help="Artifact of `dq calibrate` (needed by "
                                     "smoothquant / svdquant / deltaquant). Default: out/<recipe name>-calib "
                                     "when it exists."),
    predictor: Path = typer.Option(None, "--predictor", help="6Bit-Diffusion predictor from `dq predictor-fit`, "
                                   "recorded in the checkpoint: `dq generate` then routes each layer per step. "
                                   "Default, for a recipe with a predictor section: out/<recipe name>-predictor.json "
                                   "when it exists."),
    device: str = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Quantize the recipe's model and write one safetensors checkpoint.

    In: a recipe (model + per-layer method/formats). Out: a checkpoint holding packed weights,
    scales and the layers kept in 16 bits, with the recipe in its metadata; `dq generate
    --checkpoint` runs it. With --predictor, the checkpoint also records the per-step routing
    (weights are still stored once, packed).
    """
    # Imported here: `dq --help` must not wait for torch and diffusers.
    from dq_cli import checkpoint as ckpt
    from dq_calib.artifact import ArtifactError, load_calibration
    from dq_cli.quant import plan_layers, quantize_model
    from dq_cli.quant.linear import uses_low_rank
    from dq_cli.quant.apply import check_calibration, needs_calibration
    from dq_cli.session import load_recipe_model
    set_threads()
    spec = recipes.load(recipe, model_path=model)
    source = recipes.resolve(recipe)[0]
    out = out or default_output(source, "checkpoint")
    check_writable(out, "--out")
    device = pick_device(device)
    adapter = load_recipe_model(spec.model, device)
    if spec.quantization.fuse_qkv:
        adapter.fuse_qkv()
    layers = adapter.linears()
    plans = plan_layers(spec.quantization, layers, source,
                        hadamard=spec.predictor.hadamard_block if spec.predictor else 0)
    if not adapter.trained:
        note(quiet, "[yellow]note:[/] dq-tiny has no trained weights yet: quantizing a seeded random network")
    if predictor is None and spec.predictor is not None:
        predictor = _default_predictor(source, spec, quiet)
    routing = _load_predictor(predictor, spec, plans, source) if predictor is not None else None
    stats = None
    if needs_calibration(plans):
        calibration = calibration or default_output(source, "calibration")
        try:
            stats = load_calibration(calibration)
        except ArtifactError as e:
            raise DQError(f"--calibration: {e}") from None
        check_calibration(stats, layers, plans, f"--calibration {calibration}")
    elif calibration is not None:
        note(quiet, f"[yellow]note:[/] the recipe's methods need no calibration: --calibration {calibration} unused")
    fits = {}

    def done(name, fit):
        if fit is not None:
            fits[name] = {"alpha": fit.alpha, "error": fit.error, "refine_steps": fit.refine_steps}
        advance()

    asked = {name: plan.rank for name, plan in plans.items()}
    with progress_bar(quiet, "quantizing layers", len(plans)) as advance:
        count = quantize_model(adapter, plans, stats, on_layer=done)
    reduced = sorted(name for name, plan in plans.items() if uses_low_rank(plan) and plan.rank < asked[name])
    # the folder as an absolute path: the checkpoint then loads from any working directory
    folder = str(Path(spec.model.path).expanduser().resolve()) if spec.model.path else None
    model_meta = {"name": spec.model.name, "path": folder, "family": adapter.family, "source": adapter.source}
    ckpt.save(out, adapter.transformers(), plans, spec.text, model_meta, fits=fits,
              predictor=routing.to_json() if routing else None)
    size = out.stat().st_size
    note(quiet, f"quantized {count} of {len(layers)} linear layers ({adapter.family})")
    if reduced:
        note(quiet, f"[yellow]note:[/] {len(reduced)} layers are narrower than the recipe's low-rank branch: their "
                    f"rank is their smaller side (e.g. {reduced[0]}: rank {plans[reduced[0]].rank} of "
                    f"{asked[reduced[0]]})")
    if fits:
        mean = sum(f["error"] for f in fits.values()) / len(fits)
        note(quiet, f"mean relative output error on calibration tokens: {mean:.4f}")
    if routing is not None:
        note(quiet, f"predictor {predictor}: {routing.kind} routing of {len(routing.layers)} layers "
                    f"({routing.low_route}/{routing.safe_route}, {routing.achieved.get('bits', float('nan')):.2f} bits "
                    "on the calibration set)")
    console.print(f"wrote {out} ({size / 2**20:.2f} MiB)") if not quiet else typer.echo(str(out))


def _default_predictor(source: str, spec, quiet: bool) -> Path | None:
    """Where `dq predictor-fit` writes by default, for a recipe that routes activations per step."""
    default = default_output(source, "predictor")
    if default.is_file():
        return default
    note(quiet, f"[yellow]note:[/] no predictor (--predictor, or {default} from `dq predictor-fit`): the "
                f"checkpoint runs each layer on its recipe's activation format "
                f"({spec.quantization.default.activation} by default), without per-step routing")
    return None


def _load_predictor(path: Path, spec, plans: dict, source: str):
    from dq_calib.predictor import Predictor, PredictorError
    from dq_cli.session import check_predictor

    try:
        predictor = Predictor.load(path)
    except PredictorError as e:
        raise DQError(f"--predictor: {e}") from None
    check_predictor(predictor, spec, plans, f"--predictor {path}", source.removeprefix("builtin:"))
    return predictor
