"""dq bench: compare the unquantized model with quantized checkpoints on one prompt and seed."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from dq_cli.commands.common import (DEVICE_OPTION, QUIET_OPTION, attention_note, check_attention, console,
                                    handle_errors, note, pick_device, progress_bar, set_threads)
from dq_cli.errors import DQError


@handle_errors
def command(
    what: str = typer.Argument("model", help="model: run the model and checkpoints; kernels: the quantized "
                               "linear kernels against cuBLAS at real model shapes (CUDA only)."),
    kernel_models: list[str] = typer.Option([], "--shapes", help="With `kernels`: which models' linear shapes "
                                            "(repeatable; default wan-a14b-480p). One of: wan-a14b-480p, "
                                            "wan-a14b-720p, wan-ti2v-5b, ltx-video, cogvideox-5b."),
    checkpoints: list[Path] = typer.Option([], "--checkpoint", "-c", help="A quantized checkpoint to compare "
                                           "(repeatable)."),
    model: str = typer.Option(None, "--model", "-m", help="Baseline model (default: the first checkpoint's, "
                              "else dq-tiny)."),
    prompt: str = typer.Option("a red circle moving right on a blue background", "--prompt", "-p"),
    steps: int = typer.Option(None, "--steps", min=1),
    seed: int = typer.Option(0, "--seed"),
    frames: int = typer.Option(None, "--frames", min=1),
    height: int = typer.Option(None, "--height", min=8),
    width: int = typer.Option(None, "--width", min=8),
    quality: bool = typer.Option(False, "--quality", help="Quality mode: run a prompt set (default: dq-tiny's "
                                 "held-out prompts) and report PSNR/SSIM against the baseline and prompt adherence."),
    prompts: Path = typer.Option(None, "--prompts", help="Prompt file for --quality (txt, jsonl, csv, parquet)."),
    num_prompts: int = typer.Option(None, "--num-prompts", "-n", min=1, help="Use the first N prompts (--quality)."),
    attention: list[str] = typer.Option([], "--attention", help="Also run every configuration with this "
                                        "self-attention backend (sage8: 8-bit attention), as rows "
                                        "'<config>+sage8'; the reference stays the SDPA baseline. Repeatable."),
    out: Path = typer.Option(None, "--out", "-o", help="Write <out>.json and <out>.md."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    device: str = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Time and compare configurations side by side.

    In: checkpoints (and a baseline model). Out: per configuration the median step latency, end-to-end
    latency, peak GPU memory, weight bytes in memory, checkpoint size and PSNR of the video against
    the baseline's video of the same seed; a table, and JSON/markdown with --json / --out.
    """
    # Imported here: `dq --help` must not wait for torch and diffusers.
    from dq_cli import bench as lib
    from dq_cli import quality_bench as qb
    from dq_cli.models import load_model
    from dq_cli.session import load_quantized, sampling
    set_threads()
    for backend in attention:
        check_attention(backend)
    extra = [b for b in dict.fromkeys(attention) if b != "sdpa"]
    device = pick_device(device)
    if what == "kernels":
        return _kernels(kernel_models or ["wan-a14b-480p"], device, out, as_json, quiet)
    if what != "model":
        raise DQError(f"dq bench {what}: expected 'model' or 'kernels'")
    for path in checkpoints:
        if not path.is_file():
            raise DQError(f"--checkpoint {path}: no such file")
    baseline_name = model
    if baseline_name is None and checkpoints:
        from dq_cli.checkpoint import read_info

        spec = read_info(checkpoints[0]).model
        baseline_name = spec.get("path") or spec["name"]
    baseline = load_model(baseline_name or "dq-tiny", device=device)
    run = sampling(baseline, None, steps=steps, seed=seed, frames=frames, height=height, width=width)
    if quality:
        doc = _quality(baseline, checkpoints, model, run, prompts, num_prompts, device, quiet, extra)
        return _emit(doc, out, as_json, quiet, qb.markdown, _print_quality)
    rows = []
    with progress_bar(quiet, "benchmarking", run.steps * (1 + len(checkpoints)) * (1 + len(extra))) as advance:
        row, reference = lib.run_config("baseline", baseline, prompt, run, None, on_step=lambda s: advance())
        rows.append(row)

        def measure(adapter, name: str, path: Path | None) -> None:
            for label in _attention_variants(adapter, name, extra, skip_sdpa=path is None):
                row, video = lib.run_config(label, adapter, prompt, run, path.stat().st_size if path else None,
                                            on_step=lambda s: advance())
                row.psnr_db = lib.psnr_db(video, reference)
                if adapter.attention is not None:
                    row.notes.append(attention_note(adapter.attention))
                rows.append(row)

        measure(baseline, "baseline", None)
        del baseline
        for path in checkpoints:
            adapter, _ = load_quantized(path, device, model=model)
            measure(adapter, path.stem, path)
            del adapter
    settings = {"prompt": prompt, "attention": ["sdpa", *extra], "steps": run.steps, "seed": run.seed,
                "frames": run.frames, "height": run.height, "width": run.width}
    doc = lib.report(rows, lib.environment(device), settings)
    _emit(doc, out, as_json, quiet, lib.markdown, _print_table)


def _attention_variants(adapter, name: str, extra: list[str], skip_sdpa: bool = False):
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


def _emit(doc: dict, out: Path | None, as_json: bool, quiet: bool, to_markdown, print_table) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        out.with_suffix(".md").write_text(to_markdown(doc))
        note(quiet, f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    if as_json:
        typer.echo(json.dumps(doc, indent=1))
    elif not quiet:
        print_table(doc)


def _kernels(models: list[str], device: str, out, as_json: bool, quiet: bool) -> None:
    from dq_cli import bench as lib
    from dq_cli import kernel_bench as kb

    unknown = [m for m in models if m not in kb.SHAPES]
    if unknown:
        raise DQError(f"--shapes {unknown[0]}: unknown; choose from {', '.join(kb.SHAPES)}")
    if not device.startswith("cuda"):
        raise DQError("dq bench kernels times GPU kernels against cuBLAS: it needs a CUDA device")
    import triton

    total = sum(len(kb.SHAPES[m][2]) for m in models)
    with progress_bar(quiet, "timing kernels", total) as advance:
        rows = kb.run(models, on_shape=lambda r: advance())
    doc = kb.report(rows, lib.environment(device) | {"triton": triton.__version__})
    _emit(doc, out, as_json, quiet, kb.markdown, lambda d: console.print(kb.markdown(d)))


def _quality(baseline, checkpoints, model, run, prompts, num_prompts, device, quiet, extra=()) -> dict:
    from dq_calib.prompts import PromptSourceError, load_prompts
    from dq_cli import bench as lib
    from dq_cli import quality_bench as qb
    from dq_cli.commands.calibrate import builtin_prompts
    from dq_cli.session import load_quantized

    source = prompts or builtin_prompts("dq-tiny-heldout")
    try:
        prompt_list = load_prompts(source, num_prompts)
    except PromptSourceError as e:
        raise DQError(str(e)) from None
    adherence = baseline.family == "dq-tiny"  # the analyzer reads dq-tiny's world only
    total = len(prompt_list) * (1 + len(checkpoints)) * (1 + len(extra)) + 1
    with progress_bar(quiet, "generating", total) as advance:
        reference = qb.generate_all(baseline, prompt_list, run, on_video=advance)
        rows = [qb.evaluate("baseline", prompt_list, reference, None, adherence)]
        for label in _attention_variants(baseline, "baseline", list(extra), skip_sdpa=True):
            videos = qb.generate_all(baseline, prompt_list, run, on_video=advance)
            rows.append(qb.evaluate(label, prompt_list, videos, reference, adherence))
        variants = {}
        for path in checkpoints:
            adapter, _ = load_quantized(path, device, model=model)
            for label in _attention_variants(adapter, path.stem, list(extra)):
                videos = qb.generate_all(adapter, prompt_list, run, on_video=advance)
                rows.append(qb.evaluate(label, prompt_list, videos, reference, adherence))
                rows[-1].runtime = adapter.runtime.summary() if adapter.runtime is not None else None
            variants[path.stem] = qb.quantized_layers(adapter)
        # Per-layer error: every checkpoint's layers on the baseline's own activations (first prompt).
        errors = qb.layer_errors(baseline, variants, prompt_list[0], run) if variants else {}
        advance()
    for row in rows[1:]:
        per_layer = errors.get(row.config, {})
        row.layer_error = sum(per_layer.values()) / len(per_layer) if per_layer else None
        row.per_layer_error = per_layer
    settings = {"prompts": len(prompt_list), "prompt_source": str(source), "attention": ["sdpa", *extra],
                "steps": run.steps, "guidance": run.guidance, "seed": run.seed, "frames": run.frames, "height": run.height,
                "width": run.width}
    return qb.report(rows, lib.environment(device), settings)


def _print_quality(doc: dict) -> None:
    table = Table(title=f"dq bench --quality ({doc['settings']['prompts']} prompts)")
    for col in ("config", "layer err", "PSNR dB", "SSIM", "adherence %", "act bits", "TDC skip %"):
        table.add_column(col, justify="right")
    for r in doc["rows"]:
        rt = r.get("runtime") or {}
        table.add_row(r["config"], "—" if r.get("layer_error") is None else f"{r['layer_error']:.4f}",
                      "—" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}",
                      "—" if r["ssim"] is None else f"{r['ssim']:.4f}",
                      "—" if r["adherence"] is None else f"{100 * r['adherence']:.1f}",
                      "—" if rt.get("average_bits") is None else f"{rt['average_bits']:.2f}",
                      "—" if not rt else f"{100 * rt['skip_fraction']:.1f}")
    console.print(table)


def _print_table(doc: dict) -> None:
    table = Table(title=f"dq bench on {doc['environment'].get('gpu', doc['environment']['device'])}")
    for col in ("config", "step ms", "e2e s", "peak GiB", "weights MiB", "ckpt MiB", "PSNR dB"):
        table.add_column(col, justify="right")
    for r in doc["rows"]:
        table.add_row(r["config"], f"{r['step_ms_median']:.1f}", f"{r['end_to_end_s']:.2f}",
                      "—" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}",
                      f"{r['weights_bytes'] / 2**20:.2f}",
                      "—" if r["checkpoint_bytes"] is None else f"{r['checkpoint_bytes'] / 2**20:.2f}",
                      "—" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}")
    console.print(table)
