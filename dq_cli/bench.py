"""Side-by-side comparison of configurations on one prompt and seed: the unquantized model and
any number of quantized checkpoints. Times come from the device the run is on."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dq_cli.models.base import Adapter



@dataclass
class BenchRow:
    config: str
    step_ms_median: float
    end_to_end_s: float
    peak_memory_gib: float | None
    weights_bytes: int
    checkpoint_bytes: int | None
    psnr_db: float | None = None
    notes: list[str] = field(default_factory=list)


def weights_bytes(adapter: Adapter) -> int:
    """Bytes of every parameter and buffer of the transformers, as held in memory."""
    from dq_cli.bench_report import module_bytes

    return sum(module_bytes(model) for model in adapter.transformers().values())


def run_config(name: str, adapter: Adapter, prompt: str, run, checkpoint_bytes: int | None,
               on_step=None) -> tuple[BenchRow, torch.Tensor]:
    device_is_cuda = next(iter(adapter.transformers().values())).device.type == "cuda"
    if device_is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stamps = [time.perf_counter()]

    def tick(step):
        if device_is_cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        if on_step:
            on_step(step)

    video = adapter.generate(prompt, negative_prompt=run.negative_prompt, steps=run.steps, guidance=run.guidance,
                             seed=run.seed, frames=run.frames, height=run.height, width=run.width, on_step=tick)
    total = time.perf_counter() - stamps[0]
    steps_ms = [1000 * (b - a) for a, b in zip(stamps, stamps[1:])]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device_is_cuda else None
    row = BenchRow(config=name, step_ms_median=statistics.median(steps_ms), end_to_end_s=total,
                   peak_memory_gib=peak, weights_bytes=weights_bytes(adapter), checkpoint_bytes=checkpoint_bytes)
    return row, video


def run_baseline(adapter: Adapter, prompt: str, run, extra: list[str],
                 advance=lambda: None) -> tuple[list[BenchRow], torch.Tensor]:
    """The unquantized model's rows — SDPA, then each extra attention backend ('baseline+<backend>')
    — and its SDPA video, the reference of every PSNR. `advance` after every step."""
    row, reference = run_config("baseline", adapter, prompt, run, None, on_step=lambda s: advance())
    return [row, *_attention_rows(adapter, "baseline", None, reference, prompt, run, extra, advance)], reference


def run_checkpoints(checkpoints: list[Path], reference: torch.Tensor, prompt: str, run, device: str,
                    model: str | None, extra: list[str], advance=lambda: None) -> list[BenchRow]:
    """Each checkpoint's rows (rebuilt around `model` when given), one at a time: SDPA, then each
    extra attention backend ('<stem>+<backend>')."""
    from dq_cli.session import load_quantized

    rows = []
    for path in checkpoints:
        adapter, _ = load_quantized(path, device, model=model)
        rows += _attention_rows(adapter, path.stem, path, reference, prompt, run, extra, advance)
        del adapter
    return rows


def _attention_rows(adapter: Adapter, name: str, path: Path | None, reference: torch.Tensor, prompt: str, run,
                    extra: list[str], advance) -> list[BenchRow]:
    rows = []
    for label in attention_variants(adapter, name, extra, skip_sdpa=path is None):
        row, video = run_config(label, adapter, prompt, run, path.stat().st_size if path else None,
                                on_step=lambda s: advance())
        row.psnr_db = psnr_db(video, reference)
        if adapter.attention is not None:
            row.notes.append(adapter.attention.line())
        rows.append(row)
    return rows


def attention_variants(adapter: Adapter, name: str, extra: list[str], skip_sdpa: bool = False):
    """Yield the row label for each attention backend the configuration runs with (SDPA first),
    with the adapter switched to it; back on SDPA afterwards."""
    if not skip_sdpa:
        yield name
    for backend in extra:
        adapter.set_attention(backend)
        yield f"{name}+{backend}"
    if extra:
        adapter.set_attention("sdpa")
        adapter.attention = None


def psnr_db(video: torch.Tensor, reference: torch.Tensor) -> float:
    mse = ((video.double() - reference.double()) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def report(rows: list[BenchRow], env: dict, settings: dict) -> dict:
    from dq_cli.bench_report import new_report

    return new_report("model", env, settings, [asdict(r) for r in rows])


def markdown(doc: dict) -> str:
    head = "| config | step (ms, median) | end to end (s) | peak GPU mem (GiB) | weights (MiB) | checkpoint (MiB) | PSNR vs baseline (dB) |"
    lines = [head, "|" + "---|" * 7]
    for r in doc["rows"]:
        ck = "—" if r["checkpoint_bytes"] is None else f"{r['checkpoint_bytes'] / 2**20:.2f}"
        mem = "—" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
        psnr = "—" if r["psnr_db"] is None else ("inf" if math.isinf(r["psnr_db"]) else f"{r['psnr_db']:.2f}")
        lines.append(f"| {r['config']} | {r['step_ms_median']:.1f} | {r['end_to_end_s']:.2f} | {mem} | "
                     f"{r['weights_bytes'] / 2**20:.2f} | {ck} | {psnr} |")
    env = doc["environment"]
    lines.append("")
    lines.append(f"Device: {env.get('gpu', env['device'])}; torch {env['torch']}; dq {env['dq']}. "
                 f"Settings: {doc['settings']}.")
    from dq_cli.bench_report import switches_line

    if switches := switches_line(env):
        lines.append(switches)
    return "\n".join(lines) + "\n"
