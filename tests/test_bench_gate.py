"""The regression gate: `dq bench compare NEW --baseline OLD` and `--baseline` on a run. A synthetic 10%
slowdown fails naming the config, metric and both values; an identical rerun passes; memory and
quality floors; missing or failed rows; kernel reports matched by shape; version 1 reports."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from conftest import run_dq

SPEED = ("forward_ms", "step_ms", "e2e_s")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A real e2e report of dq-tiny (two configurations, tiny size, one step)."""
    out = tmp_path_factory.mktemp("gate") / "base"
    run_dq("bench", "e2e", "--configs", "bf16,w8a8", "--frames", "2", "--height", "16", "--width", "16",
           "--steps", "1", "--no-breakdown", "--device", "cpu", "-o", out, "-q")
    return out.with_suffix(".json")


def _variant(src: Path, dst: Path, change) -> Path:
    doc = json.loads(src.read_text())
    change(doc)
    dst.write_text(json.dumps(doc))
    return dst


def _scale(doc: dict, metrics, factor: float, config: str | None = None) -> None:
    for row in doc["rows"]:
        if config is None or row["config"] == config:
            for m in metrics:
                if row.get(m) is not None:
                    row[m] *= factor


def test_the_report_being_gated_is_real(report):
    doc = json.loads(report.read_text())
    assert [r["config"] for r in doc["rows"]] == ["bf16", "w8a8"]
    assert all(r["status"] == "ok" and r["forward_ms"] > 0 and r["e2e_s"] > 0 for r in doc["rows"])


def test_identical_rerun_passes_and_a_10_percent_slowdown_fails(report, tmp_path):
    result = run_dq("bench", "compare", report, "--baseline", report, "--max-slowdown", "5%")
    assert "gate passed" in result.stdout and "2 rows" in result.stdout

    slow = _variant(report, tmp_path / "slow.json", lambda d: _scale(d, SPEED, 1.10, "w8a8"))
    for limit in ("5%", "0.05"):
        result = run_dq("bench", "compare", slow, "--baseline", report, "--max-slowdown", limit, code=4)
        base = {r["config"]: r for r in json.loads(report.read_text())["rows"]}["w8a8"]
        new = {r["config"]: r for r in json.loads(slow.read_text())["rows"]}["w8a8"]
        out = result.output
        key = "dq-tiny@2x16x16/w8a8/sdpa/eager"
        # names the configuration, the metric, the baseline and the new value
        assert f"{key}: forward_ms {base['forward_ms']:.4g} → {new['forward_ms']:.4g} (+10.0% slowdown" in out
        assert f"{key}: e2e_s" in out
        assert "bf16/sdpa/eager" not in out.split("regression")[-1]  # the unchanged row passed
        assert "Traceback" not in out
    # the same slowdown passes a looser limit
    run_dq("bench", "compare", slow, "--baseline", report, "--max-slowdown", "15%")
    # faster is never a regression
    fast = _variant(report, tmp_path / "fast.json", lambda d: _scale(d, SPEED, 0.5))
    run_dq("bench", "compare", fast, "--baseline", report)


def test_memory_increase_and_quality_floors(report, tmp_path):
    def grow(doc):
        for row in doc["rows"]:
            row["weights_bytes"] = int(row["weights_bytes"] * 1.2)
            row["peak_memory_gib"] = 10.0  # none on the CPU: the gate skips what the baseline lacks
    bigger = _variant(report, tmp_path / "big.json", grow)
    result = run_dq("bench", "compare", bigger, "--baseline", report, "--max-memory-increase", "10%", code=4)
    assert "weights_bytes" in result.output and "+20.0% increase, limit +10%" in result.output
    run_dq("bench", "compare", bigger, "--baseline", report, "--max-memory-increase", "25%")

    # quality: dq-tiny rows carry PSNR against the BF16 video
    psnr = json.loads(report.read_text())["rows"][1]["psnr_db"]
    assert 15 < psnr < 80
    result = run_dq("bench", "compare", report, "--baseline", report, "--min-psnr", str(psnr + 1), code=4)
    assert f"w8a8/sdpa/eager: psnr_db — → {psnr:.4g} (below the floor {psnr + 1:g} dB)" in result.output
    run_dq("bench", "compare", report, "--baseline", report, "--min-psnr", str(psnr - 1), "--min-ssim", "0.5")
    worse = _variant(report, tmp_path / "worse.json", lambda d: d["rows"][1].update(psnr_db=psnr - 2))
    result = run_dq("bench", "compare", worse, "--baseline", report, "--max-psnr-drop", "0.5", code=4)
    assert "psnr_db" in result.output and "limit −0.5 dB" in result.output
    run_dq("bench", "compare", worse, "--baseline", report, "--max-psnr-drop", "3")


def test_a_missing_or_failed_configuration_is_a_regression(report, tmp_path):
    gone = _variant(report, tmp_path / "gone.json", lambda d: d["rows"].pop())
    result = run_dq("bench", "compare", gone, "--baseline", report, code=4)
    assert "w8a8/sdpa/eager: in the baseline, missing from the new report" in result.output

    def fail(doc):
        doc["rows"][1].update(status="failed", reason="out of GPU memory: tried to allocate 2 GiB")
    failed = _variant(report, tmp_path / "failed.json", fail)
    result = run_dq("bench", "compare", failed, "--baseline", report, code=4)
    assert "failed in the new report (out of GPU memory" in result.output
    # a row new in the report has no baseline: listed, not failed
    run_dq("bench", "compare", report, "--baseline", gone)


def test_gate_runs_after_a_measurement(report, tmp_path):
    """`dq bench e2e ... --baseline`: the run itself exits 4 when a configuration disappears, and passes
    against a baseline it does not regress (here a slower one: CPU timings are too noisy for 5%)."""
    args = ["bench", "e2e", "--configs", "bf16", "--frames", "2", "--height", "16", "--width", "16", "--steps", "1",
            "--no-breakdown", "--device", "cpu", "-q"]
    result = run_dq(*args, "--baseline", report, code=4)
    assert "w8a8/sdpa/eager: in the baseline, missing" in result.output

    def slower(doc):
        doc["rows"] = doc["rows"][:1]
        _scale(doc, SPEED, 100.0)
    result = run_dq(*args, "--baseline", _variant(report, tmp_path / "slower.json", slower))
    assert "gate passed" in result.stdout


def test_kernel_reports_are_matched_by_shape_and_version_1_still_loads(tmp_path):
    measured = REPO / "docs" / "measurements" / "kernels_480p_h100.json"  # a version 1 report from an H100
    doc = json.loads(measured.read_text())
    assert doc["report_version"] == 1
    run_dq("bench", "compare", measured, "--baseline", measured)

    slower = copy.deepcopy(doc)
    slower["rows"][2]["w4a4_ms"] *= 1.10  # one shape of dq's kernel
    slower["rows"][0]["bf16_ms"] *= 2.0   # the cuBLAS peer column is not dq's to regress
    path = tmp_path / "k.json"
    path.write_text(json.dumps(slower))
    result = run_dq("bench", "compare", path, "--baseline", measured, code=4)
    r = doc["rows"][2]
    assert f"{r['model']}/{r['layer']}/{r['m']}x{r['k']}->{r['n']}: w4a4_ms" in result.output
    assert "bf16_ms" not in result.output


def test_version_1_model_report_has_no_kind_and_still_gates(tmp_path):
    v1 = {"report_version": 1, "environment": {"dq": "0.1.0", "torch": "2.11", "device": "cuda", "gpu": "NVIDIA H100"},
          "settings": {}, "rows": [{"config": "baseline", "step_ms_median": 100.0, "end_to_end_s": 2.0,
                                    "peak_memory_gib": 1.0, "weights_bytes": 10, "checkpoint_bytes": None,
                                    "psnr_db": None, "notes": []}]}
    old = tmp_path / "old.json"
    old.write_text(json.dumps(v1))
    v1["rows"][0]["step_ms_median"] = 120.0
    new = tmp_path / "new.json"
    new.write_text(json.dumps(v1))
    result = run_dq("bench", "compare", new, "--baseline", old, code=4)
    assert "baseline: step_ms_median 100 → 120 (+20.0% slowdown" in result.output


def test_gate_refuses_bad_input_without_a_traceback(report, tmp_path):
    cases = [
        (("compare", report), "--baseline is required"),
        (("compare", report, "--baseline", tmp_path / "none.json"), "none.json: no such file"),
        (("compare", report, "--baseline", report, "--max-slowdown", "5"), "ambiguous; write 5% "),
        (("compare", report, "--baseline", report, "--max-slowdown", "fast"), "--max-slowdown fast: expected"),
        (("merge", report), "two or more reports"),
    ]
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    cases.append((("compare", junk, "--baseline", report), "junk.json: not JSON"))
    kernels = REPO / "docs" / "measurements" / "kernels_480p_h100.json"
    cases.append((("compare", report, "--baseline", kernels), "compare reports of the same kind"))
    for args, message in cases:
        result = run_dq("bench", *args, code=2)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)


def test_a_bad_baseline_is_refused_before_anything_runs(report, tmp_path, monkeypatch):
    """A typo in --baseline (or a report of another kind) must not cost the bench it would gate: the
    run exits 2 before loading a model or planning an e2e run."""
    import dq_cli.bench_e2e
    import dq_cli.models

    def must_not_run(*args, **kwargs):
        raise AssertionError("the bench ran before its baseline was checked")

    monkeypatch.setattr(dq_cli.models, "load_model", must_not_run)
    monkeypatch.setattr(dq_cli.bench_e2e, "plan", must_not_run)
    kernels = REPO / "docs" / "measurements" / "kernels_480p_h100.json"
    cases = [
        (("bench", "--baseline", tmp_path / "typo.json"), "--baseline " + str(tmp_path / "typo.json") + ": no such file"),
        (("bench", "e2e", "--smoke", "--baseline", kernels), "the baseline is a 'kernels' report and the new one an 'e2e'"),
        (("bench", "--quality", "--baseline", report), "the baseline is an 'e2e' report and the new one a 'quality'"),
    ]
    for args, message in cases:
        result = run_dq(*args, code=2)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)


def test_merge_joins_reports_of_one_device(report, tmp_path):
    def rename(doc):
        for row in doc["rows"]:
            row["key"] = row["key"].replace("dq-tiny@", "other@")
            row["model"] = "other"
    other = _variant(report, tmp_path / "other.json", rename)
    doc = json.loads(run_dq("bench", "merge", report, other, "--json", "-o", tmp_path / "all.480p").stdout)
    assert len(doc["rows"]) == 4 and doc["merged_from"] == [str(report), str(other)]
    assert doc["environment"]["command"] == json.loads(report.read_text())["environment"]["command"]  # one command
    # a dot in the name is not a suffix to replace
    assert (tmp_path / "all.480p.md").read_text().count("### ") == 2
    assert json.loads((tmp_path / "all.480p.json").read_text()) == doc
    assert (tmp_path / "all.480p.breakdown.png").is_file() is False  # that report was run --no-breakdown
    assert (tmp_path / "all.480p.speed_quality.png").read_bytes().startswith(b"\x89PNG")
    result = run_dq("bench", "merge", report, report, "-o", tmp_path / "dup", code=2)
    assert "is in both" in result.output
    elsewhere = _variant(other, tmp_path / "gpu.json", lambda d: d["environment"].update(gpu="NVIDIA H200"))
    result = run_dq("bench", "merge", report, elsewhere, "-o", tmp_path / "mixed", code=2)
    assert "measured on NVIDIA H200" in result.output


def test_merge_gives_rows_their_speed_up_from_another_reports_bf16(report, tmp_path):
    """One configuration per run (each inside a time limit): the w8a8 run has no bf16 row, so no
    '× BF16'; merged with the bf16 run, it gets bf16's forward / its own, as one run would give."""
    def only(config):
        def keep(doc):
            doc["rows"] = [dict(r, vs_bf16=None, e2e_vs_bf16=None) for r in doc["rows"] if r["config"] == config]
        return keep
    bf16 = _variant(report, tmp_path / "bf16.json", only("bf16"))
    w8a8 = _variant(report, tmp_path / "w8a8.json", only("w8a8"))
    w8a8 = _variant(w8a8, w8a8, lambda d: d["environment"].update(command="dq bench e2e --configs w8a8",
                                                                   git_commit="0123456789abcdef"))
    doc = json.loads(run_dq("bench", "merge", bf16, w8a8, "--json", "-o", tmp_path / "m").stdout)
    # two commands: each named, no single "Command:" line claiming every row; the commits differ
    assert doc["environment"]["command"] is None and "Command:" not in (tmp_path / "m.md").read_text()
    assert f"merged from {w8a8}: `dq bench e2e --configs w8a8`" in doc["notes"]
    assert doc["notes"][0].startswith("the merged reports ran at different commits") and "0123456789ab" in doc["notes"][0]
    whole = {r["config"]: r for r in json.loads(report.read_text())["rows"]}
    got = {r["config"]: r for r in doc["rows"]}
    assert got["w8a8"]["vs_bf16"] == pytest.approx(whole["w8a8"]["vs_bf16"], rel=1e-12)
    assert got["w8a8"]["e2e_vs_bf16"] == pytest.approx(whole["w8a8"]["e2e_vs_bf16"], rel=1e-12)
    assert got["bf16"]["vs_bf16"] == pytest.approx(1.0)


def test_an_explicit_commit_wins_over_the_trees_git(monkeypatch, tmp_path):
    from dq_cli.bench_report import git_state

    monkeypatch.setenv("DQ_GIT_COMMIT", "abc1234")
    assert git_state() == ("abc1234", None)  # this checkout has a .git of its own
    monkeypatch.setenv("DQ_GIT_COMMIT", "abc1234-dirty")  # tools/stamp_commit.sh on a changed tree
    assert git_state() == ("abc1234", True)
    monkeypatch.delenv("DQ_GIT_COMMIT")
    monkeypatch.setenv("GITHUB_SHA", "def5678")
    assert git_state(tmp_path) == ("def5678", None)  # no checkout there: the CI's commit


def test_reports_record_the_switches_they_ran_with(report, tmp_path, monkeypatch):
    """A run with DQ_GEMM_TMA=0 must not read like one of the defaults: the DQ_* switches that change
    what runs land in the report and its markdown, and the gate says when two reports differ in them."""
    from dq_cli.bench_report import markdown, switches, switches_line

    monkeypatch.setenv("DQ_GEMM_TMA", "0")
    monkeypatch.setenv("DQ_PROGRESS", "1")       # how the run is shown, not what runs
    monkeypatch.setenv("DQ_GIT_COMMIT", "abc1234")
    got = switches()
    assert got["DQ_GEMM_TMA"] == "0" and "DQ_PROGRESS" not in got and "DQ_GIT_COMMIT" not in got
    doc = json.loads(report.read_text())
    assert isinstance(doc["environment"]["switches"], dict)  # written by the real run
    doc["environment"]["switches"] = {"DQ_GEMM_TMA": "0"}
    assert switches_line(doc["environment"]) == "Switches: `DQ_GEMM_TMA=0`"
    assert "Switches: `DQ_GEMM_TMA=0`" in markdown(doc)
    assert switches_line({"switches": {}}) is None
    other = _variant(report, tmp_path / "tma0.json", lambda d: d["environment"].update(switches={"DQ_GEMM_TMA": "0"}))
    result = run_dq("bench", "compare", other, "--baseline", report)  # a note, not a regression
    assert "environment switches differ" in result.output and "DQ_GEMM_TMA=0" in result.output
    assert "environment switches differ" not in run_dq("bench", "compare", report, "--baseline", report).output
