"""dq predictor-fit: fit 6Bit-Diffusion's Γ→error regressions (not built yet)."""

from __future__ import annotations

from pathlib import Path

import typer

from dq_cli import recipe as recipes
from dq_cli.commands.common import QUIET_OPTION, RECIPE_OPTION, handle_errors
from dq_cli.errors import NotReadyError


@handle_errors
def command(
    recipe: str = RECIPE_OPTION,
    calibration: Path = typer.Option(None, "--calibration", "-c", help="Calibration artifact from `dq calibrate` "
                                     "(the .json or .safetensors)."),
    out: Path = typer.Option(None, "--out", "-o", help="Predictor file to write (.json)."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Fit per-layer E_rel(t) ≈ α·Γ(t−1) + β from a calibration artifact and choose the NVFP4/INT8
    routing threshold that meets the recipe's target bit width.

    In: a recipe and the artifact of `dq calibrate`. Out: a versioned predictor file and plots.
    """
    recipes.load(recipe)  # a bad recipe is reported before anything else
    raise NotReadyError("dq predictor-fit: the 6Bit-Diffusion predictor is not implemented in this "
                        "version of dq; nothing was written")
