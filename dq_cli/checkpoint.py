"""Quantized checkpoints: one safetensors file holding every tensor of the quantized transformer(s)
(packed weights, scales, and the layers kept in 16 bits), with metadata that says how to rebuild
the model around them. Loading builds the diffusers model on the meta device and fills it, so a
quantized model never materialises its full-precision weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dq_cli import __version__
from dq_cli.atomic import write_atomic
from dq_cli.errors import CheckpointError
from dq_cli.models.base import LinearInfo, role_of
from dq_cli.models.fusion import FUSED_NAME, fuse_qkv
from dq_cli.quant.apply import set_submodule
from dq_cli.quant.linear import QuantLinear
from dq_cli.quant.plan import LayerPlan

FORMAT = "dq-checkpoint"
FORMAT_VERSION = 1


@dataclass
class CheckpointInfo:
    path: Path
    recipe: str
    model: dict        # name, path, family, source
    classes: dict      # component -> diffusers class name
    configs: dict      # component -> config dict
    layers: dict       # layer name -> LayerPlan
    predictor: dict | None = None  # 6Bit-Diffusion's predictor (JSON), when quantized with one

    def size_bytes(self) -> int:
        return self.path.stat().st_size


def save(path: Path, components: dict[str, torch.nn.Module], plans: dict[str, LayerPlan],
         recipe_text: str, model: dict, fits: dict | None = None, predictor: dict | None = None) -> None:
    """Write atomically: a temporary file in the same folder, renamed when complete."""
    tensors = {}
    for component, module in components.items():
        for key, value in module.state_dict().items():
            tensors[f"{component}.{key}"] = value.contiguous()
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "dq_version": __version__,
        "recipe": recipe_text,
        "model": json.dumps(model),
        "classes": json.dumps({c: type(m).__name__ for c, m in components.items()}),
        "configs": json.dumps({c: _jsonable(dict(m.config)) for c, m in components.items()}),
        "layers": json.dumps({name: plan.to_json() for name, plan in plans.items()}),
        # What calibration found per layer (smoothing strength, relative output error).
        "fits": json.dumps(fits or {}),
        # 6Bit-Diffusion's per-layer routing predictor, read back by `dq generate`.
        "predictor": json.dumps(predictor),
    }
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_info(path: Path) -> CheckpointInfo:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated/garbled files
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dq checkpoint (no '{FORMAT}' metadata)")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: checkpoint format version {version}, this dq ({__version__}) "
                              f"reads version {FORMAT_VERSION}")
    return CheckpointInfo(path=path, recipe=meta["recipe"], model=json.loads(meta["model"]),
                          classes=json.loads(meta["classes"]), configs=json.loads(meta["configs"]),
                          layers={k: LayerPlan.from_json(v) for k, v in json.loads(meta["layers"]).items()},
                          predictor=json.loads(meta.get("predictor", "null")))


def build_components(info: CheckpointInfo, device: str, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """Rebuild each quantized transformer from its config on the meta device, then fill it."""
    import diffusers
    from accelerate import init_empty_weights

    components = {}
    with safe_open(str(info.path), framework="pt", device="cpu") as f:
        keys = set(f.keys())
        for component, class_name in info.classes.items():
            cls = getattr(diffusers, class_name, None)
            if cls is None:
                raise CheckpointError(f"{info.path}: model class {class_name} is not in diffusers "
                                      f"{diffusers.__version__}")
            # parameters on the meta device, buffers real: non-persistent buffers (RoPE tables) are in
            # no state dict and must be computed at construction
            with init_empty_weights():
                model = cls.from_config(info.configs[component])
            prefix = f"{component}."
            if any(k.startswith(prefix) and f".{FUSED_NAME}." in k for k in keys):
                fuse_qkv(model)  # made with `quantization.fuse_qkv` (meta tensors: nothing is copied)
            for name, plan in info.layers.items():
                if name.startswith(prefix):
                    module_name = name[len(prefix):]
                    linear = LinearInfo(component, module_name, role_of(module_name), 0, 0)
                    set_submodule(model, module_name, QuantLinear.empty_like(
                        model.get_submodule(module_name), plan, name, sees_video=linear.sees_video))
            expected = {prefix + k for k in model.state_dict()}
            missing = sorted(expected - keys)
            if missing:
                raise CheckpointError(f"{info.path}: missing tensor {missing[0]} "
                                      f"({len(missing)} missing); the file does not match its metadata")
            packed = {f"{n}.{t}" for n, m in model.named_modules() if isinstance(m, QuantLinear)
                      for t in m.tensor_names}
            # As diffusers' from_pretrained does: modules the class keeps in fp32 (Wan's time
            # embedder, norms, modulation tables) stay fp32 in a 16-bit model.
            keep_fp32 = tuple(getattr(cls, "_keep_in_fp32_modules", None) or ())
            state = {}
            for key in expected:
                value, local = f.get_tensor(key), key[len(prefix):]
                # Quantized tensors keep their stored dtypes: they are the format.
                if local in packed or not value.is_floating_point():
                    state[local] = value
                elif dtype in (torch.float16, torch.bfloat16) and any(m in local.split(".") for m in keep_fp32):
                    state[local] = value.float()
                else:
                    state[local] = value.to(dtype)
            model.load_state_dict(state, assign=True, strict=True)
            components[component] = model.to(device).eval()
    return components


def _jsonable(config: dict) -> dict:
    return json.loads(json.dumps(config, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
