"""Reading the calibration artifact that `dq calibrate` writes (<out>.json + <out>.safetensors)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

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
    layers: Mapping[str, LayerCalibration]  # read from the file layer by layer
    trajectories: Trajectories | None = None  # 6Bit-Diffusion's Γ / E_rel / Δ, when recorded


LAYER_TENSORS = ("absmax", "tokens", "token_meta")
# 2: a layer fed the same tensor as another (Q/K/V) names it (`same_input_as`) and stores no tensors.
FORMAT_VERSION = "2"


class _Layers(Mapping):
    """name -> LayerCalibration, each read from the file when asked for: a Wan A14B artifact is tens
    of GB, and a fit needs one layer's tensors at a time."""

    def __init__(self, path: Path, names: list[str], same_input: dict[str, str]):
        self.path, self.names, self.same_input = path, dict.fromkeys(names), same_input

    def __getitem__(self, name: str) -> LayerCalibration:
        if name not in self.names:
            raise KeyError(name)
        stored = self.same_input.get(name, name)
        with safe_open(str(self.path), framework="pt") as f:
            return LayerCalibration(*(f.get_tensor(f"{stored}.{part}") for part in LAYER_TENSORS))

    def __contains__(self, name) -> bool:  # Mapping's own would read the layer's tensors to find out
        return name in self.names

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def artifact_paths(path: str | Path) -> tuple[Path, Path]:
    """(<stem>.safetensors, <stem>.json) for a path naming either file or their stem. Only those two
    suffixes are the artifact's: any other dot belongs to the name (`out/cal.v2` → `out/cal.v2.json`)."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def load_calibration(path: str | Path) -> Calibration:
    """`path` may name the .json, the .safetensors or the common stem. The file's header is checked
    (every layer's tensors present, the data complete) now; layers' tensors are read on access."""
    tensors_path, json_path = artifact_paths(path)
    for p in (json_path, tensors_path):
        if not p.is_file():
            raise ArtifactError(f"{p}: no such calibration file (run `dq calibrate` first)")
    summary = json.loads(json_path.read_text())
    if summary.get("format") != "dq-calibration":
        raise ArtifactError(f"{json_path}: not a dq calibration artifact")
    if int(summary.get("format_version", "1")) > int(FORMAT_VERSION):
        raise ArtifactError(f"{json_path}: calibration format {summary['format_version']} is newer than this dq "
                            f"reads ({FORMAT_VERSION}); upgrade dq")
    same_input = {name: layer["same_input_as"] for name, layer in summary["layers"].items() if "same_input_as" in layer}
    try:
        handle = safe_open(str(tensors_path), framework="pt")  # checks the header and the data's extent
    except Exception as e:  # safetensors raises several types for damaged files
        raise ArtifactError(f"{tensors_path}: unreadable ({e})") from None
    with handle as f:
        names = set(f.keys())
        missing = next((f"{name}.{part}" for name in summary["layers"] if name not in same_input
                        for part in LAYER_TENSORS if f"{name}.{part}" not in names), None)
        if missing is not None:
            raise ArtifactError(f"{tensors_path}: missing tensor {missing}")
        # 6Bit-Diffusion's trajectories are small: read now, the rest layer by layer
        trajectory_tensors = {k: f.get_tensor(k) for k in names if k.startswith("traj.")}
    trajectories = None
    if "trajectories" in summary:
        try:
            trajectories = Trajectories.from_artifact(summary["trajectories"], trajectory_tensors)
        except KeyError as e:
            raise ArtifactError(f"{tensors_path}: missing tensor {e.args[0]} (or {json_path}: key "
                                f"trajectories.{e.args[0]})") from None
    return Calibration(summary, _Layers(tensors_path, list(summary["layers"]), same_input), trajectories)
