"""PNG plots of an e2e report: where the time of a step goes (stacked bars: linears / attention /
other) and speed against quality (PSNR vs BF16; on random-weight runs, which have no quality,
speed against checkpoint size)."""

from __future__ import annotations

from pathlib import Path

COLORS = {"linears": "#4c72b0", "attention": "#dd8452", "other": "#8c8c8c"}


def _label(row: dict, many_models: bool) -> str:
    label = f"{row['config']} · {row['attention']} · {'compile' if row['compile'] else 'eager'}"
    return f"{row['model']}@{row['resolution']} · {label}" if many_models else label


def write(doc: dict, out: Path) -> list[Path]:
    """<out>.breakdown.png and <out>.speed_quality.png (or .speed_size.png); the paths written."""
    if doc.get("kind") != "e2e":
        return []
    from dq_cli.bench_report import stem

    out = stem(out)
    import matplotlib

    matplotlib.use("Agg")
    rows = [r for r in doc["rows"] if r.get("status", "ok") == "ok"]
    many = len({(r["model"], r["resolution"]) for r in rows}) > 1
    paths = []
    broken = [r for r in rows if r.get("breakdown")]
    if broken:
        paths.append(_breakdown(broken, many, out.with_name(out.name + ".breakdown.png"), doc))
    timed = [r for r in rows if r.get("forward_ms")]
    if any(r.get("psnr_db") is not None for r in timed):
        paths.append(_scatter([r for r in timed if r.get("psnr_db") is not None], "psnr_db", "PSNR vs BF16 (dB)",
                              many, out.with_name(out.name + ".speed_quality.png"), doc))
    elif timed:
        largest = max((r.get("checkpoint_bytes") or 0) for r in timed)
        unit, scale = ("GiB", 2**-30) if largest >= 2**30 else ("MiB", 2**-20)
        paths.append(_scatter([r for r in timed if r.get("checkpoint_bytes")], "checkpoint_bytes",
                              f"checkpoint ({unit})", many, out.with_name(out.name + ".speed_size.png"), doc,
                              scale=scale))
    return paths


def _title(doc: dict, what: str) -> str:
    from dq_cli.bench_report import device_label

    device = device_label(doc["environment"])
    random = any(r.get("random_weights") for r in doc["rows"])
    return f"dq bench e2e — {what}\n{device}" + (" — random weights" if random else "")


def _breakdown(rows: list[dict], many: bool, path: Path, doc: dict) -> Path:
    import matplotlib.pyplot as plt

    labels = [_label(r, many) for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.6))
    left = [0.0] * len(rows)
    for part in ("linears", "attention", "other"):
        values = [max(r["breakdown"][f"{part}_ms"], 0.0) for r in rows]
        ax.barh(labels, values, left=left, color=COLORS[part], label=part)
        left = [a + b for a, b in zip(left, values)]
    ax.invert_yaxis()
    ax.set_xlabel("ms per denoising step")
    ax.set_title(_title(doc, "where a step's time goes"), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Up to this many points each carry their label; more would overprint one another (a whole e2e table
# has ~20), so then a legend names the colours instead.
MAX_ANNOTATED = 8


def _scatter(rows: list[dict], metric: str, ylabel: str, many: bool, path: Path, doc: dict,
             scale: float = 1.0) -> Path:
    """One point per row: colour = configuration, ○ eager / □ compiled, filled = 8-bit attention
    (any backend but SDPA), hollow = SDPA."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    def config_of(r):
        return f"{r['model']}@{r['resolution']} · {r['config']}" if many else r["config"]

    configs = list(dict.fromkeys(config_of(r) for r in rows))
    palette = plt.get_cmap("tab10" if len(configs) <= 10 else "tab20")
    color = {c: palette(i % palette.N) for i, c in enumerate(configs)}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in rows:
        x, y, c = r.get("vs_bf16") or 0.0, r[metric] * scale, color[config_of(r)]
        ax.scatter([x], [y], marker="s" if r["compile"] else "o", s=48, edgecolors=[c], linewidths=1.5,
                   facecolors=[c] if r["attention"] != "sdpa" else ["none"])
        if len(rows) <= MAX_ANNOTATED:
            ax.annotate(_label(r, many), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if len(rows) > MAX_ANNOTATED:
        handles = [Line2D([], [], ls="", marker="o", color=color[c], label=c) for c in configs]
        handles += [Line2D([], [], ls="", marker="o", mfc="none", color="k", label="eager, SDPA"),
                    Line2D([], [], ls="", marker="s", color="k", label="compiled, 8-bit attention")]
        ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_xlabel("forward speed-up vs BF16 with SDPA (same compile mode; ○ eager, □ compiled; "
                  "filled: 8-bit attention)")
    ax.set_ylabel(ylabel)
    ax.axvline(1.0, color="#999", lw=0.8, ls="--")
    ax.set_title(_title(doc, "speed vs " + ("quality" if metric == "psnr_db" else "size")), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
