"""The built-in recipes for the real model families, as a user runs them: each one's quantization,
predictor, TDC and attention settings, pointed at its family's tiny random diffusers folder (the
Wan ones also at image-to-video Wan; calibration and sampling shrunk to a few steps at the tiny
size), through `dq calibrate`, `dq predictor-fit` where it has a predictor, `dq quantize` and
`dq generate`. The checkpoint must hold what the recipe says, calibrated, and the video must come
out of the recipe's attention backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

import tiny_models as tm
from conftest import run_dq, write_recipe
from dq_cli import recipe as recipes

FAMILY_OF = {"wan2.2-t2v-a14b": "wan", "ltx-video": "ltx", "cogvideox-5b": "cogvideox", "cogvideox": "cogvideox"}
STEPS = 3


def _family(name: str) -> str | None:
    return FAMILY_OF.get(recipes.parse(recipes.resolve(name)[1]).model.name)


MODEL_RECIPES = [n for n in recipes.builtin_recipes() if _family(n) is not None]
# (recipe, family folder it runs on): each on its own family, and the Wan ones also on image-to-video
# Wan (the same transformer with the first frame's latents as extra input channels)
RUNS = [(n, _family(n)) for n in MODEL_RECIPES] + [("wan22_w4a4.yaml", "wan-i2v"), ("wan22_6bit.yaml", "wan-i2v")]


def test_every_model_recipe_is_covered():
    """A new built-in recipe for a real model must land in the table above (or be for dq-tiny)."""
    others = {recipes.parse(recipes.resolve(n)[1]).model.name for n in recipes.builtin_recipes()} - set(FAMILY_OF)
    assert others == {"dq-tiny"}
    assert {"wan22_w4a4.yaml", "wan22_w8a8.yaml", "wan22_6bit.yaml", "ltx_w4a4.yaml", "cogvideox_w8a8.yaml"} <= set(MODEL_RECIPES)


def shrunk(name: str, family: str, folder) -> dict:
    """The built-in recipe with the tiny folder as its model and a few steps at the tiny size; its
    quantization, predictor, TDC and attention untouched."""
    data = yaml.safe_load(recipes.resolve(name)[1])
    g = tm.GEN_KWARGS[family]
    data["model"]["path"] = str(folder)
    data["calibration"].update(num_prompts=2, steps=STEPS, tokens_per_layer=64, step_ranges=STEPS)
    data.setdefault("sampling", {}).update(steps=STEPS, frames=g["num_frames"], height=g["height"], width=g["width"])
    return data


def expected_formats(data: dict) -> set[tuple[str, str, str]]:
    """(method, weight, activation) of the recipe's default and of each of its layer rules (the tiny
    models have every role the built-in recipes name)."""
    default = data["quantization"]["default"]
    triple = lambda d: (d.get("method", default["method"]), d.get("weight", default["weight"]),  # noqa: E731
                        d.get("activation", default["activation"]))
    return {triple(default)} | {triple(rule) for rule in data["quantization"].get("layers", [])}


@pytest.mark.parametrize("name, family", RUNS)
def test_builtin_recipe_runs_on_its_family(name, family, family_dir, image_file, tmp_path):
    from dq_cli.checkpoint import read_info

    data = shrunk(name, family, family_dir(family))
    recipe = write_recipe(tmp_path / name, data)
    image = ["--image", image_file] if family == "wan-i2v" else []
    run_dq("calibrate", "-r", recipe, "-o", tmp_path / "calib", "-q", *image)
    predictor = []
    if "predictor" in data:
        run_dq("predictor-fit", "-r", recipe, "-c", tmp_path / "calib", "-o", tmp_path / "pred.json", "-q")
        predictor = ["--predictor", tmp_path / "pred.json"]
    quant = run_dq("quantize", "-r", recipe, "-c", tmp_path / "calib", "-o", tmp_path / "model.safetensors", *predictor)
    # as the README runs it: the checkpoint alone (its recipe's sampling and attention come with it)
    gen = run_dq("generate", "-c", tmp_path / "model.safetensors", "-p", "a red car on a road",
                 "-o", tmp_path / "video.mp4", "--save-frames", tmp_path / "frames.npy", *image)

    info = read_info(tmp_path / "model.safetensors")
    calib = json.loads((tmp_path / "calib.json").read_text())
    assert set(info.layers) == set(calib["layers"])
    assert {(p.method, p.weight, p.activation) for p in info.layers.values()} == expected_formats(data)
    assert (info.predictor is not None) == ("predictor" in data)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        smoothed = [n for n, p in info.layers.items() if p.method in ("smoothquant", "svdquant", "deltaquant")]
        # calibrated smoothing, not the data-free λ = 1
        assert all(not torch.all(f.get_tensor(f"{n}.smooth") == 1) for n in smoothed)
        # the low-rank branch: the recipe's rank, or the layer's smaller side where that is less (the
        # tiny models are 24-128 wide against ranks of 64-128), as the plan that shapes a load says
        for n, p in info.layers.items():
            if p.method in ("svdquant", "deltaquant"):
                out_features, r = f.get_tensor(f"{n}.lora_up").shape
                r2, in_features = f.get_tensor(f"{n}.lora_down").shape
                assert r == r2 == p.rank == min(data["quantization"]["default"]["rank"], out_features, in_features)
    reduced = [p for p in info.layers.values() if 0 < p.rank < data["quantization"]["default"].get("rank", 0)]
    assert ("narrower than the recipe's low-rank branch" in quant.stderr) == bool(reduced)
    g = tm.GEN_KWARGS[family]
    frames = np.load(tmp_path / "frames.npy")
    assert frames.shape == (g["num_frames"], g["height"], g["width"], 3) and frames.std() > 0
    if data.get("sampling", {}).get("attention") == "sage8":
        # the recipe's backend took the self-attention (the tiny models' head dim of 12 leaves each call
        # on SDPA, which the note says with the reason)
        assert "attention sage8: " in gen.stderr and "self-attention calls in 8 bits" in gen.stderr
