"""Side-by-side comparison of configurations on one prompt and seed: the unquantized model and
any number of quantized checkpoints. Times come from the device the run is on."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field

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
