"""Loading what a command works on: the recipe's model, or a quantized checkpoint rebuilt around
its model, and the sampling settings (flag > recipe > the family's defaults)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from dq_cli import checkpoint as ckpt
from dq_cli.errors import CheckpointError
from dq_cli.models import load_model, resolve_dtype, transformer_configs
from dq_cli.models.base import Adapter
from dq_cli.quant.apply import attach_state
from dq_cli.recipe import ModelSpec, Recipe, SamplingSpec


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


def load_recipe_model(spec: ModelSpec, device: str) -> Adapter:
    return load_model(spec.name, spec.path, spec.family, device=device, dtype=spec.dtype)


def load_quantized(path: Path, device: str, dtype: str = "auto", model: str | None = None) -> tuple[Adapter, ckpt.CheckpointInfo]:
    """Rebuild a quantized model from a checkpoint; `model` (a name or folder) overrides where its
    other components (VAE, text encoder) come from, and must be the model it was made from."""
    info = ckpt.read_info(path)
    spec = info.model
    name, folder = (model, None) if model else (spec["name"], spec.get("path"))
    _check_same_model(info, name, folder)
    components = ckpt.build_components(info, device, resolve_dtype(dtype, device))
    adapter = load_model(name, folder, spec.get("family") if not model else None, device=device, dtype=dtype,
                         components=components)
    attach_state(adapter)
    return adapter, info


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
