"""`dq bench --quality`: a prompt set through the unquantized model and any number of quantized
checkpoints at the same seeds. Per configuration: PSNR and SSIM of each video against the
baseline's video (per frame, averaged), and prompt adherence (dq-tiny's world analyzer)."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from dq_cli.models.base import Adapter
from dq_cli.models.fusion import part_names
from dq_cli.quality import psnr, score, ssim



@dataclass
class QualityRow:
    config: str
    psnr_db: float | None = None       # mean over prompts; None for the baseline itself
    ssim: float | None = None
    adherence: float | None = None     # mean overall adherence over prompts, 0..1
    layer_error: float | None = None   # mean over layers of ‖Y_q − Y‖/‖Y‖ on the baseline's own inputs
    per_layer_error: dict[str, float] = field(default_factory=dict)
    per_prompt: list[dict] = field(default_factory=list)
    runtime: dict | None = None        # 6Bit-Diffusion: average activation bits, route mix, TDC skips


def generate_all(adapter: Adapter, prompts: list[str], run, on_video: Callable[[], None] | None = None
                 ) -> list[torch.Tensor]:
    videos = []
    for i, prompt in enumerate(prompts):
        videos.append(adapter.generate(prompt, negative_prompt=run.negative_prompt, steps=run.steps,
                                       guidance=run.guidance, seed=run.seed + i, frames=run.frames,
                                       height=run.height, width=run.width))
        if adapter.runtime is not None:
            adapter.runtime.end_run()
        if on_video:
            on_video()
    return videos


def evaluate(name: str, prompts: list[str], videos: list[torch.Tensor], reference: list[torch.Tensor] | None,
             adherence: bool) -> QualityRow:
    row = QualityRow(config=name)
    for prompt, video, ref in zip(prompts, videos, reference or [None] * len(videos)):
        entry: dict = {"prompt": prompt}
        if ref is not None:
            entry["psnr_db"], entry["ssim"] = psnr(video, ref), ssim(video, ref)
        if adherence:
            s = score(video, prompt)
            entry["adherence"] = s.overall
            entry["attributes"] = {k: getattr(s, f"{k}_ok") for k in s.counted}
        row.per_prompt.append(entry)
    if reference is not None:
        finite = [e["psnr_db"] for e in row.per_prompt if math.isfinite(e["psnr_db"])]
        row.psnr_db = statistics.mean(finite) if finite else math.inf
        row.ssim = statistics.mean(e["ssim"] for e in row.per_prompt)
    if adherence:
        row.adherence = statistics.mean(e["adherence"] for e in row.per_prompt)
    return row


def layer_errors(baseline: Adapter, variants: dict[str, dict[str, torch.nn.Module]], prompt: str, run,
                 probe_every: int = 4) -> dict[str, dict[str, float]]:
    """Relative output error of each variant's quantized layers, fed the baseline's own inputs
    during a baseline sampling run (every `probe_every`-th step, all CFG branches), so every
    variant is judged on identical activations with the real token grid (DeltaQuant's cubes).
    Returns {config: {layer: error}}, the error pooled over the probed calls."""
    sums = {c: {} for c in variants}

    def compare(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        for config, layers in variants.items():
            layer = layers.get(name)
            if layer is None:
                continue
            layer.forward_state = baseline.state
            num, den = sums[config].get(name, (0.0, 0.0))
            sums[config][name] = (num + (layer(x).float() - y).pow(2).sum().item(), den + y.pow(2).sum().item())

    def hook_for(name: str, parts: list[str], part: str, outputs: dict):
        """A variant's layer `name` against the baseline's `parts` (one layer, or a fused Q/K/V's
        three, which read the same input: their outputs concatenated are what the fused one computes)."""
        def hook(module, args, output):
            if baseline.state.step % probe_every:
                return
            outputs[part] = output.float()
            if part == parts[-1]:
                compare(name, args[0], torch.cat([outputs.pop(p) for p in parts], dim=-1))
        return hook

    baseline_names = {info.name for info in baseline.linears()}
    handles = []
    for name in dict.fromkeys(n for layers in variants.values() for n in layers):
        parts = part_names(name) if name not in baseline_names else [name]
        if all(p in baseline_names for p in parts):
            outputs = {}
            for part in parts:
                module = baseline.transformers()[part.split(".", 1)[0]].get_submodule(part.split(".", 1)[1])
                handles.append(module.register_forward_hook(hook_for(name, parts, part, outputs)))
    try:
        baseline.generate(prompt, negative_prompt=run.negative_prompt, steps=run.steps, guidance=run.guidance,
                          seed=run.seed, frames=run.frames, height=run.height, width=run.width)
    finally:
        for h in handles:
            h.remove()
    return {c: {n: math.sqrt(a / max(b, 1e-30)) for n, (a, b) in d.items()} for c, d in sums.items()}


def quantized_layers(adapter: Adapter) -> dict[str, torch.nn.Module]:
    return {f"{c}.{n}": m for c, model in adapter.transformers().items() for n, m in model.named_modules()
            if getattr(m, "is_quant_linear", False)}


def run_configs(baseline: Adapter, checkpoints: list, prompts: list[str], run, device: str, model: str | None = None,
                extra: list[str] = (), on_video: Callable[[], None] = lambda: None,
                on_rows: Callable[[list[QualityRow]], None] | None = None) -> list[QualityRow]:
    """Every prompt through the unquantized model (the reference), through it with each extra
    attention backend, then through each checkpoint (rebuilt around `model` when given) with SDPA and
    each backend; PSNR/SSIM against the reference, adherence on dq-tiny (whose world the analyzer
    reads), and last each checkpoint's per-layer error on the baseline's activations of the first
    prompt. `on_video` after each video and once for the layer errors; `on_rows(rows so far)` after
    each configuration."""
    from dq_cli.bench import attention_variants
    from dq_cli.session import load_quantized

    adherence = baseline.family == "dq-tiny"
    rows: list[QualityRow] = []

    def add(row: QualityRow) -> None:
        rows.append(row)
        if on_rows is not None:
            on_rows(rows)

    reference = generate_all(baseline, prompts, run, on_video=on_video)
    add(evaluate("baseline", prompts, reference, None, adherence))
    for label in attention_variants(baseline, "baseline", extra, skip_sdpa=True):
        add(evaluate(label, prompts, generate_all(baseline, prompts, run, on_video=on_video), reference, adherence))
    variants = {}
    for path in checkpoints:
        adapter, _ = load_quantized(path, device, model=model)
        for label in attention_variants(adapter, path.stem, extra):
            row = evaluate(label, prompts, generate_all(adapter, prompts, run, on_video=on_video), reference,
                           adherence)
            row.runtime = adapter.runtime.summary() if adapter.runtime is not None else None
            add(row)
        variants[path.stem] = quantized_layers(adapter)
    errors = layer_errors(baseline, variants, prompts[0], run) if variants else {}
    on_video()
    for row in rows[1:]:
        per_layer = errors.get(row.config, {})
        row.layer_error = sum(per_layer.values()) / len(per_layer) if per_layer else None
        row.per_layer_error = per_layer
    return rows


def report(rows: list[QualityRow], env: dict, settings: dict) -> dict:
    from dq_cli.bench_report import new_report

    return new_report("quality", env, settings, [asdict(r) for r in rows])


def bits_cell(runtime: dict) -> str:
    """A row's activation bits: the mean over its runs and, in brackets, the highest single run."""
    if runtime.get("average_bits") is None:
        return "—"
    worst = runtime.get("max_run_bits")
    return f"{runtime['average_bits']:.3f}" + (f" (≤ {worst:.3f})" if worst is not None else "")


def markdown(doc: dict) -> str:
    lines = ["| config | mean layer rel. error | PSNR vs baseline (dB) | SSIM vs baseline | adherence (%) "
             "| act. bits (6Bit) | TDC skipped (%) |",
             "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        p = "—" if r["psnr_db"] is None else ("inf" if math.isinf(r["psnr_db"]) else f"{r['psnr_db']:.2f}")
        s = "—" if r["ssim"] is None else f"{r['ssim']:.4f}"
        a = "—" if r["adherence"] is None else f"{100 * r['adherence']:.1f}"
        e = "—" if r.get("layer_error") is None else f"{r['layer_error']:.4f}"
        rt = r.get("runtime") or {}
        skip = "—" if not rt else f"{100 * rt['skip_fraction']:.1f}"
        lines.append(f"| {r['config']} | {e} | {p} | {s} | {a} | {bits_cell(rt)} | {skip} |")
    st = doc["settings"]
    lines += ["", f"{st['prompts']} prompts from {st['prompt_source']}, {st['steps']} steps, guidance "
                  f"{st['guidance']}, seeds {st['seed']}…{st['seed'] + st['prompts'] - 1}; device "
                  f"{doc['environment'].get('gpu', doc['environment']['device'])}."]
    return "\n".join(lines) + "\n"
