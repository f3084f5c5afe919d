"""Loading what a command works on: the recipe's model, or a quantized checkpoint rebuilt around
its model, and the sampling settings (flag > recipe — given, or the one a checkpoint was quantized
with — > the family's defaults)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from dq_cli import checkpoint as ckpt
from dq_cli.errors import CheckpointError, DQError, RecipeError
from dq_cli.models import load_model, resolve_dtype, transformer_configs
from dq_cli.models.base import Adapter
from dq_cli.quant.apply import attach_state
from dq_cli.recipe import ModelSpec, Recipe, SamplingSpec, parse


@dataclass(frozen=True)
class Sampling:
    steps: int
    guidance: float
    frames: int
    height: int
    width: int
    fps: int
    seed: int
    negative_prompt: str
    attention: str = "sdpa"


def sampling(adapter: Adapter, spec: SamplingSpec | None = None, **flags) -> Sampling:
    d, spec = adapter.defaults, spec or SamplingSpec()
    base = Sampling(steps=spec.steps or d.steps, guidance=d.guidance if spec.guidance is None else spec.guidance,
                    frames=spec.frames or d.frames, height=spec.height or d.height, width=spec.width or d.width,
                    fps=spec.fps if "fps" in spec.model_fields_set else d.fps, seed=spec.seed,
                    negative_prompt=spec.negative_prompt, attention=spec.attention)
    return replace(base, **{k: v for k, v in flags.items() if v is not None})


def recorded_sampling(info: ckpt.CheckpointInfo) -> SamplingSpec | None:
    """The sampling section of the recipe a checkpoint was quantized with: the settings chosen for
    its model (the steps a 6Bit predictor was fitted on, the attention backend). None when that
    recipe no longer parses (a checkpoint from an older dq): the family's defaults then."""
    try:
        return parse(info.recipe, f"{info.path} (its recipe)").sampling
    except RecipeError:
        return None


def pick_device(device: str | None, option: str = "--device") -> str:
    """cpu or cuda[:N]; None: CUDA when present. `option` is how the caller's user gives it (errors name it)."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise DQError(f"{option} {device}: expected cpu or cuda[:N]")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DQError(f"{option} {device}: no CUDA device is available")
    return device


def load_recipe_model(spec: ModelSpec, device: str) -> Adapter:
    return load_model(spec.name, spec.path, spec.family, device=device, dtype=spec.dtype)


def load_quantized(path: Path, device: str, dtype: str = "auto", model: str | None = None,
                   predictor: Path | None = None, tdc: bool | None = None,
                   model_option: str = "--model") -> tuple[Adapter, ckpt.CheckpointInfo]:
    """Rebuild a quantized model from a checkpoint; `model` (a name or folder) overrides where its
    other components (VAE, text encoder) come from, and must be the model it was made from.
    6Bit-Diffusion's runtime (per-step routing, TDC) is installed from the checkpoint's predictor and
    recipe; `predictor` (a file) replaces the recorded predictor, `tdc` turns TDC on or off.
    `model_option` is how the caller's user gives `model` (errors name it)."""
    info = ckpt.read_info(path)
    spec = info.model
    name, folder = (model, None) if model else (spec["name"], spec.get("path"))
    if folder is not None and not Path(folder).expanduser().is_dir():
        raise CheckpointError(f"{path}: the model folder it was quantized from, {folder}, is not here: give the "
                              f"model's diffusers folder with {model_option}")
    _check_same_model(info, name, folder)
    components = ckpt.build_components(info, device, resolve_dtype(dtype, device))
    adapter = load_model(name, folder, spec.get("family") if not model else None, device=device, dtype=dtype,
                         components=components)
    attach_state(adapter)
    install_runtime(adapter, info, predictor, tdc)
    return adapter, info


def install_runtime(adapter: Adapter, info: ckpt.CheckpointInfo, predictor_file: Path | None = None,
                    tdc: bool | None = None) -> None:
    """Hook the blocks for 6Bit-Diffusion when the checkpoint (or the flags) ask for it; the run
    counters land in `adapter.runtime`."""
    from dq_calib.predictor import Predictor, PredictorError
    from dq_cli.quant.runtime import install
    from dq_cli.quant.tdc import TDCConfig

    recipe = parse(info.recipe, f"{info.path} (recipe)")
    try:
        predictor = (Predictor.load(predictor_file) if predictor_file is not None
                     else Predictor.from_json(info.predictor, f"{info.path} (predictor)") if info.predictor else None)
    except PredictorError as e:
        raise DQError(str(e)) from None
    if predictor is not None:
        check_predictor(predictor, recipe, info.layers, predictor_file or info.path, "the checkpoint's recipe")
    use_tdc = recipe.tdc.enabled if tdc is None else tdc
    refresh = recipe.predictor.refresh_ratio if recipe.predictor else None
    config = TDCConfig(recipe.tdc.tau, recipe.tdc.max_skips, refresh) if use_tdc else None
    adapter.runtime = install(adapter, predictor, config) if (predictor is not None or config is not None) else None


def check_predictor(predictor, recipe: Recipe, layers: Iterable[str], where, whose: str) -> None:
    """A 6Bit-Diffusion predictor belongs to a recipe with a predictor section whose routes it uses,
    and routes only layers that recipe quantizes: a predictor fitted on another recipe's calibration
    (say a 6Bit one handed to a W8A8 checkpoint) would switch layers between routes it never measured."""
    if recipe.predictor is None:
        raise DQError(f"{where}: {whose} has no predictor section, so its layers are not routed per step (a "
                      "6Bit-Diffusion recipe such as wan22_6bit.yaml has one)")
    routes = (predictor.low_route, predictor.safe_route)
    if not set(routes) <= set(recipe.predictor.routes):
        raise DQError(f"{where}: the predictor routes {'/'.join(routes)} while {whose} routes "
                      f"{'/'.join(recipe.predictor.routes)}: fit it on a calibration of that recipe")
    unknown = sorted(set(predictor.layers) - set(layers))
    if unknown:
        raise DQError(f"{where}: the predictor routes {unknown[0]} ({len(unknown)} layers), which {whose} does not "
                      "quantize: fit it on a calibration of that recipe")


def check_same_model(info: ckpt.CheckpointInfo, model: str) -> None:
    """Refuse a checkpoint made for another model than `model` (a name or a folder)."""
    _check_same_model(info, model, None)


def _check_same_model(info: ckpt.CheckpointInfo, name: str, folder: str | None) -> None:
    try:
        reference = transformer_configs(name, folder)
    except (OSError, ValueError):
        return  # the model itself fails to load below with its own message
    for component, config in info.configs.items():
        if component not in reference:
            raise CheckpointError(f"{info.path}: made for a model with a '{component}'; "
                                  f"{folder or name} has none")
        for key, value in config.items():
            if key.startswith("_"):
                continue
            ref = reference[component].get(key)
            if _norm(ref) != _norm(value):
                raise CheckpointError(f"{info.path}: made for another model ({component}.{key} is {value!r} "
                                      f"in the checkpoint, {ref!r} in {folder or name})")


def _norm(v):
    return list(v) if isinstance(v, tuple) else v
