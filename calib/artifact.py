"""Reading the calibration artifact that `dq calibrate` writes (<out>.json + <out>.safetensors)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from dq_calib.trajectories import Trajectories


class ArtifactError(ValueError):
    pass


@dataclass
class LayerCalibration:
    absmax: torch.Tensor      # [step ranges, K]
    tokens: torch.Tensor      # [n, K]
    token_meta: torch.Tensor  # [n, 5]: step, branch, t, h, w


@dataclass
class Calibration:
    summary: dict
    layers: dict[str, LayerCalibration]
    trajectories: Trajectories | None = None  # 6Bit-Diffusion's Γ / E_rel / Δ, when recorded


def load_calibration(path: str | Path) -> Calibration:
    """`path` may name the .json, the .safetensors or the common stem."""
    stem = Path(path)
    stem = stem.with_suffix("") if stem.suffix in (".json", ".safetensors") else stem
    json_path, tensors_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for p in (json_path, tensors_path):
        if not p.is_file():
            raise ArtifactError(f"{p}: no such calibration file (run `dq calibrate` first)")
    summary = json.loads(json_path.read_text())
    if summary.get("format") != "dq-calibration":
        raise ArtifactError(f"{json_path}: not a dq calibration artifact")
    try:
        tensors = load_file(str(tensors_path))
    except Exception as e:  # safetensors raises several types for damaged files
        raise ArtifactError(f"{tensors_path}: unreadable ({e})") from None
    layers = {}
    for name in summary["layers"]:
        try:
            layers[name] = LayerCalibration(tensors[f"{name}.absmax"], tensors[f"{name}.tokens"],
                                            tensors[f"{name}.token_meta"])
        except KeyError as e:
            raise ArtifactError(f"{tensors_path}: missing tensor {e.args[0]}") from None
    trajectories = None
    if "trajectories" in summary:
        try:
            trajectories = Trajectories.from_artifact(summary["trajectories"], tensors)
        except KeyError as e:
            raise ArtifactError(f"{tensors_path}: missing tensor {e.args[0]} (or {json_path}: key "
                                f"trajectories.{e.args[0]})") from None
    return Calibration(summary, layers, trajectories)
