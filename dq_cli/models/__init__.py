"""Model adapters, one module per family, and the one function that loads any of them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dq_cli.errors import DQError
from dq_cli.models.base import Adapter, ForwardState, LinearInfo, StepInfo, folder_family, role_of
from dq_cli.models.cogvideox import CogVideoXAdapter
from dq_cli.models.dq_tiny import DqTinyAdapter
from dq_cli.models.ltx import LTXAdapter
from dq_cli.models.wan import WanAdapter, WanI2VAdapter, WanTI2VAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    a.family: a for a in (DqTinyAdapter, WanAdapter, WanI2VAdapter, WanTI2VAdapter, LTXAdapter, CogVideoXAdapter)
}
BUILTIN = {"dq-tiny": DqTinyAdapter}

__all__ = ["ADAPTERS", "Adapter", "ForwardState", "LinearInfo", "StepInfo", "load_model", "role_of", "resolve_dtype"]


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, name)


def load_model(name: str = "dq-tiny", path: str | None = None, family: str | None = None,
               device: str = "cpu", dtype: str = "auto", components: dict | None = None) -> Adapter:
    """Load a built-in model by name, or a local diffusers folder (its family read from
    model_index.json unless given). `components` replaces transformers (a quantized checkpoint's)
    so that the folder's own transformer weights are never read."""
    torch_dtype = resolve_dtype(dtype, device)
    if path is None and name in BUILTIN:
        return BUILTIN[name].load(components=components, dtype=torch_dtype).to(device)
    folder = Path(path or name).expanduser()
    if not folder.is_dir():
        raise DQError(f"model '{path or name}': not a built-in model ({', '.join(BUILTIN)}) "
                      "and not a local diffusers folder")
    family = family or folder_family(folder)
    if family is None:
        raise DQError(f"{folder}: cannot tell the model family from model_index.json; "
                      f"set model.family in the recipe ({', '.join(ADAPTERS)})")
    if family not in ADAPTERS:
        raise DQError(f"model.family '{family}' is not one of {', '.join(ADAPTERS)}")
    adapter_cls = ADAPTERS[family]
    if family == "dq-tiny":
        return adapter_cls.load(folder, components=components, dtype=torch_dtype).to(device)
    import diffusers

    # The folder's own pipeline class, not DiffusionPipeline: DiffusionPipeline.from_pretrained
    # (diffusers 0.42) treats components with a default in the pipeline's signature (Wan's
    # transformer, transformer_2) as plain options and loads the folder's weights over the ones passed.
    index = folder / "model_index.json"
    class_name = json.loads(index.read_text()).get("_class_name", "") if index.is_file() else ""
    pipeline_cls = getattr(diffusers, class_name, None) or diffusers.DiffusionPipeline
    try:
        pipe = pipeline_cls.from_pretrained(str(folder), dtype=torch_dtype, **(components or {}))
    except (OSError, ValueError, EnvironmentError) as e:
        raise DQError(f"{folder}: cannot load the diffusers pipeline ({e})") from None
    return adapter_cls(pipe, str(folder)).to(device)


def transformer_configs(name: str = "dq-tiny", path: str | None = None) -> dict[str, dict]:
    """The transformers' configs of a model, read without loading weights."""
    folder = Path(path) if path else (None if name in BUILTIN else Path(name))
    if folder is None:
        return BUILTIN[name].reference_configs()
    return {c: json.loads((folder / c / "config.json").read_text())
            for c in ("transformer", "transformer_2") if (folder / c / "config.json").is_file()}
