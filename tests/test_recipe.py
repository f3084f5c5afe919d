"""Recipes: the built-in ones parse; every kind of bad recipe stops the command with exit code 2 and
one line naming the file and the key, before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import recipe_data, write_recipe
from dq_cli import recipe as recipes
from dq_cli.errors import RecipeError


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize("name", recipes.builtin_recipes())
def test_builtin_recipes_parse_and_round_trip(name):
    source, text = recipes.resolve(name)
    assert source == f"builtin:{name}"
    recipe = recipes.parse(text, source)
    assert recipe.name == name.removesuffix(".yaml")
    # The text recorded in artifacts is itself a valid recipe that means the same thing.
    assert recipes.parse(recipe.text) == recipe


def test_empty_recipe_takes_the_defaults():
    recipe = recipes.parse("", "empty.yaml")
    assert recipe == recipes.Recipe()
    assert recipe.model.name == "dq-tiny"


def _error(text: str) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        recipes.parse(text, "r.yaml")
    return info.value


@pytest.mark.parametrize("text, key, hint", [
    ("calibraton: {num_prompts: 2}", "calibraton", "calibration"),
    ("quantization: {default: {wieght: int8}}", "quantization.default.wieght", "weight"),
    ("quantization: {layers: [{patern: 'transformer.*', weight: int8}]}", "quantization.layers[0].patern",
     "pattern"),
    ("tdc: {max_skip: 2}", "tdc.max_skip", "max_skips"),
])
def test_unknown_key_names_the_path_and_suggests_the_closest(text, key, hint):
    err = _error(text)
    assert (err.source, err.key) == ("r.yaml", key)
    assert "unknown key" in err.problem and f"did you mean '{hint}'" in err.problem


@pytest.mark.parametrize("text, key, homes", [
    ("quantization: {method: rtn}", "quantization.method", "'quantization.default' or 'quantization.layers'"),
    ("num_prompts: 4", "num_prompts", "'calibration'"),
])
def test_key_one_level_too_high_names_where_it_belongs(text, key, homes):
    err = _error(text)
    assert err.key == key and err.problem == f"unknown key — it belongs under {homes}"


def test_unknown_key_with_nothing_close_gets_no_suggestion():
    err = _error("zzzzzz: 1")
    assert err.key == "zzzzzz" and "did you mean" not in err.problem


@pytest.mark.parametrize("text, key", [
    ("calibration: {num_prompts: many}", "calibration.num_prompts"),
    ("sampling: [1, 2]", "sampling"),
    ("quantization: {default: {weight: int3}}", "quantization.default.weight"),
    ("tdc: {enabled: sometimes}", "tdc.enabled"),
    ("quantization: {default: {cubes: [{size: [1, 2, x]}]}}", "quantization.default.cubes[0].size[2]"),
])
def test_wrong_type(text, key):
    err = _error(text)
    assert err.key == key
    assert "(got " in err.problem  # the offending value is shown


@pytest.mark.parametrize("text, key, bound", [
    ("calibration: {num_prompts: 0}", "calibration.num_prompts", "greater than or equal to 1"),
    ("tdc: {tau: 20}", "tdc.tau", "less than or equal to 10"),
    ("sampling: {height: 4}", "sampling.height", "greater than or equal to 8"),
    ("quantization: {default: {cubes: [{until: 1.5, size: [1, 1, 1]}]}}",
     "quantization.default.cubes[0].until", "less than or equal to 1"),
])
def test_out_of_range(text, key, bound):
    err = _error(text)
    assert err.key == key and bound in err.problem


def test_a_rule_needs_exactly_one_selector():
    err = _error("quantization: {layers: [{weight: int8}]}")
    assert err.key == "quantization.layers[0]" and "exactly one of 'pattern' or 'role'" in err.problem


def test_invalid_yaml_names_the_line():
    err = _error("calibration:\n  num_prompts: [1,\n")
    assert err.key.startswith("line ") and "not valid YAML" in err.problem


def test_a_misspelt_builtin_name_suggests_the_right_one():
    with pytest.raises(RecipeError) as info:
        recipes.resolve("tiny_w4a5")
    assert "did you mean 'tiny_w4a4.yaml'" in str(info.value)
    with pytest.raises(RecipeError) as info:
        recipes.resolve("nothing_like_any")
    assert "did you mean" not in str(info.value)  # no far-fetched guess from the shared .yaml suffix


# ------------------------------------------------------------------ through the CLI


def _check_refused(result, path: Path, key: str, *outputs: Path) -> None:
    """Exit 2, one line on stderr naming the file and key, no traceback, nothing written."""
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and str(path) in lines[0] and key in lines[0]
    assert "Traceback" not in result.output
    for out in outputs:
        assert not out.exists()
        assert not any(out.parent.glob(f".{out.name}*")), "a temporary file was left behind"


BAD_RECIPES = {
    "unknown_key": ({"calibration": {"num_prompt": 2}}, "calibration.num_prompt"),
    "wrong_type": ({"sampling": {"steps": "three"}}, "sampling.steps"),
    "out_of_range": ({"calibration": {"tokens_per_layer": 4}}, "calibration.tokens_per_layer"),
    "missing_prompts": ({"calibration": {"prompts": "no_such_prompts.txt"}}, "calibration.prompts"),
    "missing_model": ({"model": {"path": "no_such_model_folder"}}, "model.path"),
    "pattern_matches_nothing": ({"quantization": {"layers": [{"pattern": "transformer.blocks.99.*",
                                                              "weight": "int4"}]}},
                                "quantization.layers[0].pattern"),
    "role_on_no_layer": ({"quantization": {"layers": [{"role": "cross_attn.k", "weight": "int4"}]}},
                         "quantization.layers[0].role"),
    "keep_bf16_matches_nothing": ({"quantization": {"keep_bf16": ["*.attn9.*"]}}, "quantization.keep_bf16[0]"),
}


@pytest.mark.parametrize("case", list(BAD_RECIPES))
def test_quantize_refuses_a_bad_recipe(case, dq, family_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in a recipe are relative to the current folder
    patch, key = BAD_RECIPES[case]
    # CogVideoX has no cross-attention: a role rule for cross_attn.k matches no layer there.
    data = recipe_data("cogvideox", family_dir("cogvideox"))
    data = yaml.safe_load(yaml.safe_dump(data))
    for section, values in patch.items():
        data[section] = {**data.get(section, {}), **values}
    path = write_recipe(tmp_path / f"{case}.yaml", data)
    out = tmp_path / "out" / "model.safetensors"
    _check_refused(dq("quantize", "-r", path, "-o", out, code=None), path, key, out)


@pytest.mark.parametrize("case", ["unknown_key", "missing_prompts", "pattern_matches_nothing"])
def test_calibrate_refuses_a_bad_recipe(case, dq, family_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    patch, key = BAD_RECIPES[case]
    data = recipe_data("cogvideox", family_dir("cogvideox"))
    for section, values in patch.items():
        data[section] = {**data.get(section, {}), **values}
    path = write_recipe(tmp_path / f"{case}.yaml", data)
    out = tmp_path / "out" / "calib"
    result = dq("calibrate", "-r", path, "-o", out, code=None)
    _check_refused(result, path, key, out.with_suffix(".json"), out.with_suffix(".safetensors"))


def test_missing_folders_say_where_relative_paths_start(dq, family_dir, tmp_path, monkeypatch):
    """A relative path that is not there is named with the directory it was looked for in (the
    current one, not the recipe's); a missing --model is named as --model, not as the recipe's key."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write_recipe(tmp_path / "r.yaml", recipe_data("cogvideox", "models/cogvideox"))
    out = tmp_path / "model.safetensors"
    result = dq("quantize", "-r", path, "-o", out, code=None)
    _check_refused(result, path, "model.path", out)
    assert f"taken from the current directory, {elsewhere}" in result.stderr and "--model" in result.stderr
    result = dq("quantize", "-r", write_recipe(tmp_path / "ok.yaml", recipe_data("cogvideox", family_dir("cogvideox"))),
                "--model", "no_model_here", "-o", out, code=2)
    assert result.stderr.startswith("error: --model: no such folder 'no_model_here'") and not out.exists()


def test_missing_recipe_file(dq, tmp_path):
    path = tmp_path / "nope.yaml"
    out = tmp_path / "model.safetensors"
    result = dq("quantize", "-r", path, "-o", out, code=None)
    _check_refused(result, path, "no such file", out)


def test_the_real_process_exits_2_without_a_traceback(tmp_path):
    """Exit codes through a real process (CliRunner could hide how the interpreter exits)."""
    path = write_recipe(tmp_path / "bad.yaml", "quantization:\n  default:\n    wieght: int8\n")
    out = tmp_path / "predictor.json"
    dq_bin = Path(sys.executable).with_name("dq")
    cmd = [str(dq_bin)] if dq_bin.exists() else [sys.executable, "-m", "dq_cli"]
    proc = subprocess.run([*cmd, "predictor-fit", "-r", str(path), "-o", str(out)], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1"}, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "quantization.default.wieght" in lines[0]
    assert "did you mean 'weight'" in lines[0]
    assert not out.exists()
