"""`dq bench`: the speed/size comparison and the quality table, on dq-tiny at a tiny size."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import run_dq, write_recipe

SMALL = ["--steps", "2", "--frames", "4", "--height", "16", "--width", "16"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    made = {}
    for name, default in {"passthrough": {"method": "none"},
                          "w8a8": {"method": "rtn", "weight": "int8", "activation": "int8"},
                          "w4a4": {"method": "rtn", "weight": "int4", "activation": "int4"}}.items():
        recipe = write_recipe(root / f"{name}.yaml", {"quantization": {"default": default}})
        run_dq("quantize", "-r", recipe, "-o", root / f"{name}.safetensors", "-q")
        made[name] = root / f"{name}.safetensors"
    return made


def test_bench_json_compares_against_the_baseline(checkpoints, tmp_path):
    result = run_dq("bench", "-c", checkpoints["passthrough"], "-c", checkpoints["w4a4"], *SMALL, "--json",
                    "-o", tmp_path / "report")
    doc = json.loads(result.stdout)
    rows = {r["config"]: r for r in doc["rows"]}
    assert list(rows) == ["baseline", "passthrough", "w4a4"]
    # nothing quantized: the same seed must give the very same video
    assert math.isinf(rows["passthrough"]["psnr_db"])
    assert 0 < rows["w4a4"]["psnr_db"] < math.inf
    # the checkpoint on disk holds packed 4-bit weights: smaller than the passthrough one
    assert rows["w4a4"]["checkpoint_bytes"] < 0.5 * rows["passthrough"]["checkpoint_bytes"]
    assert all(r["step_ms_median"] > 0 for r in doc["rows"])
    assert json.loads((tmp_path / "report.json").read_text()) == doc
    assert "| w4a4 |" in (tmp_path / "report.md").read_text()


def test_bench_quality_orders_8_bit_before_4_bit(checkpoints, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moving right on a blue background\n")
    result = run_dq("bench", "--quality", "-c", checkpoints["w8a8"], "-c", checkpoints["w4a4"], "--prompts", prompts,
                    *SMALL, "--json")
    rows = {r["config"]: r for r in json.loads(result.stdout)["rows"]}
    assert rows["baseline"]["psnr_db"] is None and rows["baseline"]["adherence"] is not None
    # 8-bit rounding error is ~16x smaller than 4-bit on the same activations and weights
    assert 0 < rows["w8a8"]["layer_error"] < rows["w4a4"]["layer_error"]
    assert rows["w8a8"]["psnr_db"] > rows["w4a4"]["psnr_db"]
    assert set(rows["w4a4"]["per_layer_error"]) == set(rows["w8a8"]["per_layer_error"])
    assert all(0 <= r["ssim"] <= 1 for r in rows.values() if r["ssim"] is not None)


def test_bench_quality_keeps_the_rows_it_finished_when_stopped(checkpoints, tmp_path, monkeypatch):
    """A run stopped part-way (say by a CI time limit) leaves the report of what it finished."""
    from dq_cli import quality_bench as qb

    real, calls = qb.generate_all, []

    def stopped_at_the_checkpoint(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the baseline's videos are done; the checkpoint's are not
            raise RuntimeError("stopped")
        return real(*args, **kwargs)

    monkeypatch.setattr(qb, "generate_all", stopped_at_the_checkpoint)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moving right on a blue background\n")
    result = run_dq("bench", "--quality", "-c", checkpoints["w8a8"], "--prompts", prompts, *SMALL,
                    "-o", tmp_path / "q", code=None)
    assert result.exit_code != 0
    doc = json.loads((tmp_path / "q.json").read_text())
    assert [r["config"] for r in doc["rows"]] == ["baseline"] and doc["rows"][0]["adherence"] is not None
    assert "| baseline |" in (tmp_path / "q.md").read_text()


def test_bench_missing_checkpoint_is_a_user_error(tmp_path):
    result = run_dq("bench", "-c", tmp_path / "nope.safetensors", code=2)
    assert "nope.safetensors" in result.stderr and "Traceback" not in result.stderr


def test_bench_kernels_refuses_bad_input_without_a_traceback():
    result = run_dq("bench", "kernels", "--shapes", "wan-a14b-1080p", code=2)
    assert "--shapes wan-a14b-1080p" in result.output and "wan-a14b-480p" in result.output
    result = run_dq("bench", "kernelz", code=2)
    assert "expected one of 'model', 'kernels'" in result.output
    result = run_dq("bench", "kernels", "--cube", "4,2", code=2)
    assert "--cube 4,2" in result.output and "t,h,w" in result.output
    result = run_dq("bench", "kernels", "--w4a4-format", "int4", code=2)
    assert "--w4a4-format int4" in result.output and "int4_row" in result.output
    if not torch.cuda.is_available():
        result = run_dq("bench", "kernels", code=2)
        assert "needs a CUDA device" in result.output


def test_kernel_bench_summary_weights_layers_by_count():
    from dq_cli.kernel_bench import KernelRow, summary

    def row(layer, count, bf16, w4a4):
        return KernelRow("m", layer, 10, 10, 10, count, bf16, 1, 1, w4a4, 1, 2, 1, 0.0)

    s = summary([row("attn", 4, 2.0, 1.0), row("ffn", 1, 6.0, 4.0)])["m"]
    assert s["bf16_ms"] == 4 * 2.0 + 6.0 and s["w4a4_ms"] == 4 * 1.0 + 4.0
    assert s["w4a4_speedup"] == 14.0 / 8.0 and s["w4a4_min_shape_speedup"] == 1.5


def test_kernel_report_says_which_format_rank_and_cube_it_timed():
    from dq_cli.kernel_bench import KernelRow, markdown, report

    row = KernelRow("m", "attn", 10, 10, 10, 1, 2.0, 1, 1, 1.0, 1, 2, 1, 0.0)
    doc = report([row], {"device": "cuda", "torch": "x"}, rank=128, cube=(4, 1, 4), fmt="int4_row")
    assert doc["settings"] == {"rank": 128, "cube": [4, 1, 4], "format": "int4_row"}
    assert "W4A4 in int4_row, low-rank rank 128, cubes 4×1×4 tokens" in markdown(doc)


def test_bench_quality_takes_the_guidance(checkpoints, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moving right on a blue background\n")
    common = ["bench", "--quality", "-c", checkpoints["passthrough"], "--prompts", prompts, *SMALL, "--json"]
    default = json.loads(run_dq(*common).stdout)["settings"]
    chosen = json.loads(run_dq(*common, "--guidance", "1.5").stdout)["settings"]
    assert default["guidance"] == 4.0 and chosen["guidance"] == 1.5  # dq-tiny's default, then the flag's


def test_bench_refuses_checkpoints_of_another_model_before_running(checkpoints, family_dir, tmp_path):
    """Every row is compared with the baseline's video, so every checkpoint must be of the baseline's
    model (a dq-tiny checkpoint beside a Wan one used to get a row, PSNR 7 dB against the Wan video)."""
    from conftest import recipe_data

    wan = tmp_path / "wan.safetensors"
    run_dq("quantize", "-r", write_recipe(tmp_path / "r.yaml", recipe_data("wan", family_dir("wan"))), "-o", wan, "-q")
    result = run_dq("bench", "-c", wan, "-c", checkpoints["w8a8"], *SMALL, "-o", tmp_path / "rep", code=2)
    assert f"{checkpoints['w8a8']}: made for another model" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "rep.json").exists()


def test_bench_quiet_prints_the_result(checkpoints, tmp_path):
    """-q leaves out progress and notes, not the result: the table, or the report files with --out."""
    table = run_dq("bench", "-c", checkpoints["w8a8"], *SMALL, "-q")
    assert "w8a8" in table.output and "baseline" in table.output
    files = run_dq("bench", "-c", checkpoints["w8a8"], *SMALL, "-q", "-o", tmp_path / "rep")
    assert files.stdout.split() == [str(tmp_path / "rep.json"), str(tmp_path / "rep.md")]
