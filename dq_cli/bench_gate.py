"""The regression gate: a new `dq bench` report against a baseline report of the same kind.

Rows are matched by configuration (e2e: model, resolution, config, attention, compile; kernels:
model, layer and shape; model and quality reports: the config label). Per matched row:

- speed: every time metric may grow by at most `max_slowdown` (a fraction: 0.05 = 5%);
- memory: peak GPU memory, weight bytes and checkpoint bytes by at most `max_memory_increase`;
- quality, where the report has it: PSNR and SSIM floors (`min_psnr`, `min_ssim`, absolute, on
  every new row) and `max_psnr_drop` (dB against the same row of the baseline).

A baseline row that the new report lacks, or that failed or was skipped in it, is a regression too:
a configuration that stops running must not pass silently. New rows with no baseline are listed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dq_cli.bench_report import device_label, row_key
from dq_cli.errors import DQError

# metric -> (what it is, unit); speed and memory metrics are "lower is better".
METRICS: dict[str, dict[str, tuple[str, str]]] = {
    "e2e": {"forward_ms": ("speed", "ms"), "step_ms": ("speed", "ms"), "e2e_s": ("speed", "s"),
            "peak_memory_gib": ("memory", "GiB"), "weights_bytes": ("memory", "B"),
            "checkpoint_bytes": ("memory", "B"), "psnr_db": ("quality", "dB"), "ssim": ("quality", "")},
    "model": {"step_ms_median": ("speed", "ms"), "end_to_end_s": ("speed", "s"),
              "peak_memory_gib": ("memory", "GiB"), "weights_bytes": ("memory", "B"),
              "checkpoint_bytes": ("memory", "B"), "psnr_db": ("quality", "dB")},
    # dq's own kernels; the cuBLAS columns are the peers' floor, not dq's to regress.
    "kernels": {"w4a4_ms": ("speed", "ms"), "w4a4_gemm_ms": ("speed", "ms"), "w8a8_ms": ("speed", "ms"),
                "w8a8_gemm_ms": ("speed", "ms")},
    "quality": {"psnr_db": ("quality", "dB"), "ssim": ("quality", "")},
}


class RegressionError(DQError):
    """The gate found a regression. Its own exit code, so CI tells it from a usage error (2)."""

    exit_code = 4


def parse_fraction(text: str | float | None, flag: str) -> float | None:
    """'5%' or '0.05' → 0.05. A bare number of 1 or more is refused as ambiguous."""
    if text is None:
        return None
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise DQError(f"{flag} {raw}: expected a percentage like 5% or a fraction like 0.05") from None
    if not math.isfinite(value) or value < 0:
        raise DQError(f"{flag} {raw}: must be a non-negative percentage or fraction")
    if not raw.endswith("%") and value >= 1:
        raise DQError(f"{flag} {raw}: ambiguous; write {raw}% for a percentage or {value / 100:g} as a fraction")
    return value


@dataclass(frozen=True)
class Limits:
    max_slowdown: float | None = 0.05
    max_memory_increase: float | None = 0.05
    min_psnr: float | None = None
    min_ssim: float | None = None
    max_psnr_drop: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_slowdown is not None:
            parts.append(f"slowdown ≤ {100 * self.max_slowdown:g}%")
        if self.max_memory_increase is not None:
            parts.append(f"memory increase ≤ {100 * self.max_memory_increase:g}%")
        if self.min_psnr is not None:
            parts.append(f"PSNR ≥ {self.min_psnr:g} dB")
        if self.min_ssim is not None:
            parts.append(f"SSIM ≥ {self.min_ssim:g}")
        if self.max_psnr_drop is not None:
            parts.append(f"PSNR drop ≤ {self.max_psnr_drop:g} dB")
        return ", ".join(parts) or "no limits"


@dataclass(frozen=True)
class Regression:
    config: str
    metric: str
    baseline: float | None
    new: float | None
    limit: str

    @property
    def message(self) -> str:
        if self.metric == "status":
            return f"{self.config}: {self.limit}"
        return f"{self.config}: {self.metric} {_fmt(self.baseline)} → {_fmt(self.new)} ({self.limit})"


@dataclass
class GateResult:
    regressions: list[Regression] = field(default_factory=list)
    checked: int = 0                     # metric comparisons made
    rows: int = 0                        # baseline rows matched
    new_rows: list[str] = field(default_factory=list)   # rows with no baseline
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.regressions

    def summary(self, baseline_name: str) -> str:
        if self.passed:
            return (f"gate passed against {baseline_name}: {self.rows} rows, {self.checked} comparisons")
        lines = [f"{len(self.regressions)} regression(s) against {baseline_name}:"]
        lines += [f"  {r.message}" for r in self.regressions]
        return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, int) or (isinstance(v, float) and abs(v) >= 1e5):
        return f"{v:,.0f}"
    return f"{v:.4g}"


def _ok(row: dict) -> bool:
    return row.get("status", "ok") == "ok"


def check_kind(baseline: dict, kind: str) -> None:
    """A baseline gates only a report of its own kind (a kernels table has no e2e rows to compare)."""
    if baseline["kind"] != kind:
        raise DQError(f"the baseline is {_a(baseline['kind'])} report and the new one {_a(kind)} report: "
                      "compare reports of the same kind")


def _a(kind: str) -> str:
    return f"an '{kind}'" if kind[:1] in "aeiou" else f"a '{kind}'"


def compare(new: dict, baseline: dict, limits: Limits) -> GateResult:
    kind = new["kind"]
    check_kind(baseline, kind)
    metrics = METRICS[kind]
    result = GateResult()
    new_dev, base_dev = device_label(new["environment"]), device_label(baseline["environment"])
    if new_dev != base_dev:
        result.notes.append(f"devices differ (baseline {base_dev}, new {new_dev}): speed ratios across "
                            "devices are not regressions of dq")
    new_sw, base_sw = new["environment"].get("switches") or {}, baseline["environment"].get("switches") or {}
    if new_sw != base_sw:
        result.notes.append(f"environment switches differ (baseline {_switches(base_sw)}, new {_switches(new_sw)}): "
                            "the two runs took different kernel paths")
    new_rows = {row_key(kind, r): r for r in new["rows"]}
    base_rows = {row_key(kind, r): r for r in baseline["rows"]}
    result.new_rows = [k for k in new_rows if k not in base_rows]
    for key, base in base_rows.items():
        if not _ok(base):
            continue
        row = new_rows.get(key)
        if row is None:
            result.regressions.append(Regression(key, "status", None, None, "in the baseline, missing from the new report"))
            continue
        if not _ok(row):
            why = row.get("reason") or row.get("status")
            result.regressions.append(Regression(key, "status", None, None, f"{row.get('status')} in the new report ({why})"))
            continue
        result.rows += 1
        for metric, (what, unit) in metrics.items():
            b, n = base.get(metric), row.get(metric)
            if not _number(b) or not _number(n):
                continue
            if what == "speed" and limits.max_slowdown is not None:
                result.checked += 1
                _growth(result, key, metric, b, n, limits.max_slowdown, "slowdown")
            elif what == "memory" and limits.max_memory_increase is not None:
                result.checked += 1
                _growth(result, key, metric, b, n, limits.max_memory_increase, "increase")
            elif metric == "psnr_db" and limits.max_psnr_drop is not None:
                result.checked += 1
                drop = (0.0 if b == n else b - n)  # inf − inf is no drop
                if drop > limits.max_psnr_drop:
                    result.regressions.append(Regression(key, metric, b, n, f"−{_fmt(drop)} dB, limit −{limits.max_psnr_drop:g} dB"))
    _floors(result, kind, new["rows"], limits)
    return result


def _switches(switches: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(switches.items())) or "none"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _growth(result: GateResult, key: str, metric: str, base: float, new: float, limit: float, word: str) -> None:
    if base <= 0:
        return
    change = new / base - 1
    if change > limit + 1e-12:
        result.regressions.append(Regression(key, metric, base, new, f"+{100 * change:.1f}% {word}, limit +{100 * limit:g}%"))


def _floors(result: GateResult, kind: str, rows: list[dict], limits: Limits) -> None:
    for metric, floor, unit in (("psnr_db", limits.min_psnr, " dB"), ("ssim", limits.min_ssim, "")):
        if floor is None:
            continue
        have = [r for r in rows if _ok(r) and _number(r.get(metric))]
        if not have:
            result.notes.append(f"no row has {metric}: its floor ({floor:g}{unit}) was not applied")
            continue
        for row in have:
            result.checked += 1
            if row[metric] < floor:
                result.regressions.append(Regression(row_key(kind, row), metric, None, row[metric],
                                                     f"below the floor {floor:g}{unit}"))
