"""dq bench: speed, memory, size and quality of configurations side by side, and the regression gate.

Modes: `model` (default: the unquantized model against checkpoints, one prompt; `--quality`: a
prompt set), `kernels` (dq's linear kernels against cuBLAS), `e2e` (full-size models with random
weights: dq's configurations against BF16 and torchao, over attention backends and torch.compile),
`compare` (gate a report against a baseline without running anything) and `merge` (one report from
several). `--smoke` is a seconds-long e2e run on the CPU for CI. Any mode takes `--baseline` and
exits with code 4 when a limit is broken.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.table import Table

from dq_cli.commands.common import (DEVICE_OPTION, QUIET_OPTION, check_attention, check_writable,
                                    console, handle_errors, note, pick_device, progress_bar, set_threads)
from dq_cli.errors import DQError

MODES = ("model", "kernels", "e2e", "compare", "merge")
SMOKE = {"configs": "bf16,w4a4,w8a8,6bit,torchao-int8", "steps": 2, "frames": 4, "height": 16, "width": 16}


@handle_errors
def command(
    ctx: typer.Context,
    what: str = typer.Argument("model", help="model: the model and checkpoints on one prompt (--quality: a "
                               "prompt set); kernels: dq's linear kernels against cuBLAS at real model shapes "
                               "(CUDA); e2e: full-size random-weight models, dq's configurations against BF16 and "
                               "torchao; compare: gate REPORT against --baseline without running; merge: one "
                               "report from several (-o)."),
    files: list[Path] = typer.Argument(None, help="compare: the new report; merge: the reports to merge.",
                                       show_default=False),
    kernel_rank: int = typer.Option(32, "--rank", min=1, help="With `kernels`: the W4A4 low-rank branch's rank "
                                    "(the Wan 2.2 recipe uses 128)."),
    kernel_cube: str = typer.Option("4,2,8", "--cube", help="With `kernels`: DeltaQuant's cube, t,h,w in tokens "
                                    "(the Wan 2.2 recipe's early steps use 4,1,4)."),
    kernel_format: str = typer.Option("int4_row", "--w4a4-format", help="With `kernels`: the W4A4 path's INT4 "
                                      "format for weights and activations: int4_row (one scale per output channel "
                                      "/ token) or int4_pow2 (power-of-two group scales)."),
    kernel_models: list[str] = typer.Option([], "--shapes", help="With `kernels`: which models' linear shapes "
                                            "(repeatable; default wan-a14b-480p). One of: wan-a14b-480p, "
                                            "wan-a14b-720p, wan-ti2v-5b, ltx-video, cogvideox-5b."),
    checkpoints: list[Path] = typer.Option([], "--checkpoint", "-c", help="A quantized checkpoint to compare "
                                           "(repeatable)."),
    model: str = typer.Option(None, "--model", "-m", help="model mode: baseline model (default: the first "
                              "checkpoint's, else dq-tiny). e2e: wan2.2-a14b, wan2.2-ti2v-5b, ltx-video, "
                              "cogvideox-5b (random weights, real configs), dq-tiny (trained: quality columns) "
                              "or a local diffusers folder (its configs only)."),
    prompt: str = typer.Option("a red circle moving right on a blue background", "--prompt", "-p"),
    steps: int = typer.Option(None, "--steps", min=1, help="Sampling steps (e2e: the measured run; default 2)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (default: the first checkpoint's recipe's, else 0)."),
    frames: int = typer.Option(None, "--frames", min=1),
    height: int = typer.Option(None, "--height", min=8),
    width: int = typer.Option(None, "--width", min=8),
    quality: bool = typer.Option(False, "--quality", help="Quality mode: run a prompt set (default: dq-tiny's "
                                 "held-out prompts) and report PSNR/SSIM against the baseline and prompt adherence."),
    prompts: Path = typer.Option(None, "--prompts", help="Prompt file for --quality (txt, jsonl, csv, parquet)."),
    num_prompts: int = typer.Option(None, "--num-prompts", "-n", min=1, help="Use the first N prompts (--quality; default: "
                                     "all of them, 48 in the built-in held-out set; dq-tiny alone took 13 min for 16 "
                                     "on a 2-core CPU)."),
    attention: list[str] = typer.Option([], "--attention", help="model mode: also run every configuration with "
                                        "this self-attention backend (sage8: 8-bit attention), as rows "
                                        "'<config>+sage8'. e2e: the backends to run, e.g. sdpa,sage8 (default "
                                        "sdpa). Repeatable or comma-separated."),
    configs: str = typer.Option(None, "--configs", help="e2e: comma-separated configurations, of bf16, w4a4, "
                                "w4a4-recipe, 6bit, w8a8, torchao-fp8, torchao-int8 (default: all but w4a4-recipe)."),
    resolution: str = typer.Option(None, "--resolution", help="e2e: 480p / 720p (Wan 2.2 A14B), 720p (TI2V-5B), "
                                   "512p (LTX-Video), 480p (CogVideoX-5B), or FRAMESxHEIGHTxWIDTH."),
    compile_: str = typer.Option("off", "--compile", help="e2e: torch.compile off, on, or off,on (both)."),
    compile_backend: str = typer.Option("inductor", "--compile-backend", help="e2e: torch.compile backend."),
    compile_mode: str = typer.Option("default", "--compile-mode", help="e2e: torch.compile mode: default, "
                                     "reduce-overhead (each compiled block replayed as a CUDA graph: no per-launch "
                                     "host cost), max-autotune or max-autotune-no-cudagraphs."),
    warmup_steps: int = typer.Option(None, "--warmup-steps", min=0, help="e2e: steps of the warm-up run before "
                                     "the measured one, where compilation and autotuning happen (default: as many as "
                                     "--steps, so that every cube size, expert and shape is seen before timing)."),
    breakdown: bool = typer.Option(True, "--breakdown/--no-breakdown", help="e2e: time linears / attention / "
                                   "other per step in one extra eager run."),
    dtype: str = typer.Option("auto", "--dtype", help="e2e: model dtype (auto: bfloat16 on a GPU, float32 on "
                              "the CPU)."),
    recipe_overrides: list[str] = typer.Option([], "--recipe", help="e2e: CONFIG=RECIPE, a recipe for one of dq's "
                                               "configurations (default: the family's built-in one). Repeatable."),
    guidance: float = typer.Option(None, "--guidance", min=0.0, help="CFG scale (default: the first checkpoint's "
                                   "recipe's, else the model's)."),
    num_layers: int = typer.Option(None, "--num-layers", min=1, help="e2e: build only the first N blocks of each "
                                   "transformer (a quick check of the full-width path; rows are named MODEL-NL)."),
    smoke: bool = typer.Option(False, "--smoke", help="A seconds-long e2e run on dq-tiny (bf16, w4a4, w8a8, 6bit, "
                               "torchao-int8; 2 steps at 4x16x16) that exercises the whole e2e path: for CI."),
    baseline: Path = typer.Option(None, "--baseline", help="Gate: compare the report with this one and exit "
                                  "with code 4 when a limit below is broken."),
    max_slowdown: str = typer.Option("5%", "--max-slowdown", help="Gate: a time may grow by at most this "
                                     "(5% or 0.05)."),
    max_memory_increase: str = typer.Option("5%", "--max-memory-increase", help="Gate: peak memory, weight and "
                                            "checkpoint bytes may grow by at most this."),
    min_psnr: float = typer.Option(None, "--min-psnr", help="Gate: every row with a PSNR must reach this (dB)."),
    min_ssim: float = typer.Option(None, "--min-ssim", help="Gate: every row with an SSIM must reach this."),
    max_psnr_drop: float = typer.Option(None, "--max-psnr-drop", min=0.0, help="Gate: PSNR may fall by at most "
                                        "this many dB against the baseline's row."),
    out: Path = typer.Option(None, "--out", "-o", help="Write <out>.json and <out>.md (e2e: and PNG plots "
                             "<out>.breakdown.png, <out>.speed_quality.png or .speed_size.png)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    device: str = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Time and compare configurations side by side; gate a report against a baseline.

    In: checkpoints (model mode), a model name (e2e), reports (compare, merge). Out: per configuration
    latency (per step, per transformer forward, end to end), peak GPU memory, weight and checkpoint
    bytes and quality against the baseline; a table, JSON/markdown with --json / --out. With
    --baseline, exit code 4 and one line per regression (config, metric, baseline → new value).
    """
    from dq_cli import bench_gate as gate

    limits = gate.Limits(gate.parse_fraction(max_slowdown, "--max-slowdown"),
                         gate.parse_fraction(max_memory_increase, "--max-memory-increase"),
                         min_psnr, min_ssim, max_psnr_drop)
    if what not in MODES:
        raise DQError(f"dq bench {what}: expected one of {', '.join(repr(m) for m in MODES)}")
    if files and what not in ("compare", "merge"):
        raise DQError(f"dq bench {what}: takes no report files (got {files[0]})")
    if out is not None:
        from dq_cli.bench_report import stem

        report = stem(out)
        check_writable(report.with_name(report.name + ".json"), "--out")
    attention = [b for a in attention for b in a.split(",") if b]
    for backend in attention:
        check_attention(backend)
    # Read before anything runs: a missing, unreadable or wrong-kind baseline must not cost a whole bench.
    baseline = _Baseline.read(baseline, _run_kind(what, smoke, quality))
    if what == "compare":
        return _compare(files, baseline, limits)
    if what == "merge":
        return _merge(files, out, as_json, quiet, baseline, limits)
    command_line = _command_line(ctx)
    # Imported here: `dq --help` must not wait for torch and diffusers.
    from dq_cli import bench as lib
    from dq_cli import bench_report as br
    from dq_cli.models import load_model
    from dq_cli.session import check_same_model, recorded_sampling, sampling
    set_threads()
    if smoke or what == "e2e":
        doc = _e2e(model, resolution, configs, attention, compile_, compile_backend, compile_mode, warmup_steps,
                   breakdown, dtype, recipe_overrides, guidance, num_layers, steps, seed, frames, height, width,
                   prompt, smoke, pick_device(device if not smoke or device else "cpu"), out, quiet, command_line)
        return _finish(doc, out, as_json, quiet, baseline, limits)
    extra = [b for b in dict.fromkeys(attention) if b != "sdpa"]
    device = pick_device(device)
    if what == "kernels":
        return _kernels(kernel_models or ["wan-a14b-480p"], device, out, as_json, quiet, baseline, limits,
                        command_line, kernel_rank, _cube(kernel_cube), kernel_format)
    for path in checkpoints:
        if not path.is_file():
            raise DQError(f"--checkpoint {path}: no such file")
    baseline_name, recorded = model, None
    if checkpoints:
        from dq_cli.checkpoint import read_info

        infos = [read_info(path) for path in checkpoints]
        baseline_name = baseline_name or infos[0].model.get("path") or infos[0].model["name"]
        for info in infos:  # rows compared with one baseline's video must be of its model
            check_same_model(info, baseline_name)
        recorded = recorded_sampling(infos[0])  # the settings the (first) checkpoint was made for
    base_model = load_model(baseline_name or "dq-tiny", device=device)
    run = sampling(base_model, recorded, steps=steps, guidance=guidance, seed=seed, frames=frames, height=height,
                   width=width)
    if quality:
        doc = _quality(base_model, checkpoints, model, run, prompts, num_prompts, device, quiet, extra, command_line,
                       out)
        return _finish(doc, out, as_json, quiet, baseline, limits, print_table=_print_quality)
    with progress_bar(quiet, "benchmarking", run.steps * (1 + len(checkpoints)) * (1 + len(extra))) as advance:
        rows, reference = lib.run_baseline(base_model, prompt, run, extra, advance)
        del base_model  # before the checkpoints load: one model in memory at a time
        rows += lib.run_checkpoints(checkpoints, reference, prompt, run, device, model, extra, advance)
    settings = {"prompt": prompt, "attention": ["sdpa", *extra], "steps": run.steps, "seed": run.seed,
                "frames": run.frames, "height": run.height, "width": run.width}
    doc = lib.report(rows, br.environment(device, command_line), settings)
    _finish(doc, out, as_json, quiet, baseline, limits, print_table=_print_table)


def _command_line(ctx: typer.Context) -> str:
    """The command as a user would type it again: the command path and every option not at its default."""
    parts = ["dq", ctx.info_name]  # whatever started it (python -m dq_cli, a test runner), the command is dq's
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name == "ctx" or value is None or value == param.default or value in ((), []):
            continue
        if getattr(param, "param_type_name", "") == "argument":
            parts += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
            continue
        if getattr(param, "is_flag", False) and isinstance(value, bool):
            flag = param.opts[0] if value else (param.secondary_opts[0] if param.secondary_opts else None)
            parts += [flag] if flag else []
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            parts += [param.opts[0], str(v)]
    return shlex.join(parts)


@dataclass(frozen=True)
class _Baseline:
    """`--baseline`: its path (for messages) and the report, read once, up front."""

    path: Path
    doc: dict

    @classmethod
    def read(cls, path: Path | None, kind: str | None) -> "_Baseline | None":
        from dq_cli import bench_gate as gate
        from dq_cli import bench_report as br

        if path is None:
            return None
        doc = br.load(path, "--baseline")
        if kind is not None:
            gate.check_kind(doc, kind)
        return cls(path, doc)


def _run_kind(what: str, smoke: bool, quality: bool) -> str | None:
    """The kind of report this run writes; None for compare and merge (their input reports say)."""
    if what in ("compare", "merge"):
        return None
    if smoke or what == "e2e":
        return "e2e"
    return "kernels" if what == "kernels" else "quality" if quality else "model"


def _finish(doc: dict, out: Path | None, as_json: bool, quiet: bool, baseline: _Baseline | None, limits,
            print_table=None) -> None:
    """Write and print the report, then gate it against the baseline."""
    import json

    from dq_cli import bench_report as br

    if out is not None:
        written = br.write(doc, out)
        if doc["kind"] == "e2e":
            from dq_cli import bench_plots

            written += bench_plots.write(doc, out)
        note(quiet, "wrote " + ", ".join(str(p) for p in written))
        if quiet and not as_json:  # -q prints the result: here, the files (stdout stays JSON with --json)
            typer.echo("\n".join(str(p) for p in written))
    if as_json:
        typer.echo(json.dumps(doc, indent=1))
    elif not quiet or (out is None and baseline is None):  # -q alone: the table is the only result
        (print_table or (lambda d: console.print(br.markdown(d), soft_wrap=True, markup=False)))(doc)
    if baseline is not None:
        _gate(doc, baseline, limits, quiet)


def _gate(doc: dict, baseline: _Baseline, limits, quiet: bool = False) -> None:
    from dq_cli import bench_gate as gate

    result = gate.compare(doc, baseline.doc, limits)
    for line in result.notes:
        console.print(f"[yellow]note:[/] {line}", soft_wrap=True, markup=True)
    if result.new_rows and not quiet:
        console.print(f"note: {len(result.new_rows)} rows have no baseline: {', '.join(result.new_rows)}", soft_wrap=True,
                      markup=False)
    if not result.passed:
        console.print(result.summary(str(baseline.path)), soft_wrap=True, markup=False)
        first = result.regressions[0]
        raise gate.RegressionError(f"{len(result.regressions)} regression(s) against {baseline.path} "
                                   f"({limits.describe()}); first: {first.message}")
    typer.echo(result.summary(str(baseline.path)) + f" ({limits.describe()})")


def _compare(files: list[Path], baseline: _Baseline | None, limits) -> None:
    from dq_cli import bench_report as br

    if len(files or []) != 1:
        raise DQError("dq bench compare: give one report, e.g. `dq bench compare NEW.json --baseline OLD.json`")
    if baseline is None:
        raise DQError("dq bench compare: --baseline is required")
    _gate(br.load(files[0]), baseline, limits)


def _merge(files: list[Path], out: Path | None, as_json: bool, quiet: bool, baseline, limits) -> None:
    from dq_cli import bench_report as br

    if len(files or []) < 2:
        raise DQError("dq bench merge: give two or more reports, e.g. `dq bench merge a.json b.json -o all`")
    if out is None and not as_json:
        raise DQError("dq bench merge: say where the merged report goes (-o OUT, or --json)")
    doc = br.merge([(str(f), br.load(f)) for f in files])
    _finish(doc, out, as_json, quiet, baseline, limits)


def _e2e(model, resolution, configs, attention, compile_, compile_backend, compile_mode, warmup_steps, breakdown, dtype,
         recipe_overrides, guidance, num_layers, steps, seed, frames, height, width, prompt, smoke, device, out, quiet,
         command_line) -> dict:
    from dq_cli import bench_e2e as e2e
    from dq_cli import bench_report as br

    if smoke:
        model, configs, steps = model or "dq-tiny", configs or SMOKE["configs"], steps or SMOKE["steps"]
        frames, height, width = frames or SMOKE["frames"], height or SMOKE["height"], width or SMOKE["width"]
    plan = e2e.plan(model=model or "dq-tiny", resolution=resolution, configs=configs, attention=attention,
                    compile_=compile_, dtype=dtype, recipe_overrides=recipe_overrides, num_layers=num_layers,
                    frames=frames, height=height, width=width, prompt=prompt, device=device,
                    options=e2e.Options(steps=steps or 2, warmup_steps=warmup_steps, seed=seed or 0,
                                        breakdown=breakdown, compile_backend=compile_backend,
                                        compile_mode=compile_mode, guidance=guidance))
    plan.settings["smoke"] = smoke
    env = br.environment(device, command_line)

    def partial(rows, info):
        if out is not None:  # a report after every row: a run stopped by a time limit keeps what it measured
            br.write(e2e.report(rows, env, plan.settings_with(info)), out)

    note(quiet, f"dq bench e2e: {plan.model} at {plan.resolution}, configs {', '.join(plan.configs)}, attention "
                f"{', '.join(plan.attentions)}, compile {compile_} on {device}")
    rows, info = e2e.run_plan(plan, log=lambda m: note(quiet, m), on_row=partial)
    return e2e.report(rows, env, plan.settings_with(info))


def _cube(text: str) -> tuple[int, int, int]:
    try:
        cube = tuple(int(v) for v in text.split(","))
    except ValueError:
        cube = ()
    if len(cube) != 3 or min(cube) < 1:
        raise DQError(f"--cube {text}: expected three positive integers t,h,w (e.g. 4,2,8)")
    return cube


def _kernels(models: list[str], device: str, out, as_json: bool, quiet: bool, baseline, limits,
             command_line: str, rank: int, cube: tuple[int, int, int], fmt: str) -> None:
    from dq_cli import bench_report as br
    from dq_cli import kernel_bench as kb

    from dq_kernels.formats import KERNEL_INT4_FORMATS

    if fmt not in KERNEL_INT4_FORMATS:
        raise DQError(f"--w4a4-format {fmt}: expected one of {', '.join(KERNEL_INT4_FORMATS)}")
    unknown = [m for m in models if m not in kb.SHAPES]
    if unknown:
        raise DQError(f"--shapes {unknown[0]}: unknown; choose from {', '.join(kb.SHAPES)}")
    if not device.startswith("cuda"):
        raise DQError("dq bench kernels times GPU kernels against cuBLAS: it needs a CUDA device")
    import triton

    total = sum(len(kb.SHAPES[m][2]) for m in models)
    with progress_bar(quiet, "timing kernels", total) as advance:
        rows = kb.run(models, on_shape=lambda r: advance(), rank=rank, cube=cube, fmt=fmt)
    doc = kb.report(rows, br.environment(device, command_line) | {"triton": triton.__version__}, rank, cube, fmt)
    _finish(doc, out, as_json, quiet, baseline, limits)


def _quality(baseline, checkpoints, model, run, prompts, num_prompts, device, quiet, extra=(), command_line=None,
             out: Path | None = None) -> dict:
    """The quality report. With `out`, the report is rewritten after every configuration, so that a run
    stopped by a time limit keeps the rows it finished (their per-layer errors come last, at the end)."""
    from dq_calib.prompts import PromptSourceError, load_prompts
    from dq_cli import bench_report as br
    from dq_cli import quality_bench as qb
    from dq_cli.commands.calibrate import builtin_prompts

    source = prompts or builtin_prompts("dq-tiny-heldout")
    try:
        prompt_list = load_prompts(source, num_prompts)
    except PromptSourceError as e:
        raise DQError(str(e)) from None
    settings = {"prompts": len(prompt_list), "prompt_source": str(source), "attention": ["sdpa", *extra],
                "steps": run.steps, "guidance": run.guidance, "seed": run.seed, "frames": run.frames, "height": run.height,
                "width": run.width}
    env = br.environment(device, command_line)
    partial = (lambda rows: br.write(qb.report(rows, env, settings), out)) if out is not None else None
    total = len(prompt_list) * (1 + len(checkpoints)) * (1 + len(extra)) + 1
    with progress_bar(quiet, "generating", total) as advance:
        rows = qb.run_configs(baseline, checkpoints, prompt_list, run, device, model, list(extra), on_video=advance,
                              on_rows=partial)
    return qb.report(rows, env, settings)


def _print_quality(doc: dict) -> None:
    from dq_cli import quality_bench as qb

    n = doc["settings"]["prompts"]
    table = Table(title=f"dq bench --quality ({n} prompt{'' if n == 1 else 's'})")
    for col in ("config", "layer err", "PSNR dB", "SSIM", "adherence %", "act bits", "TDC skip %"):
        table.add_column(col, justify="right")
    for r in doc["rows"]:
        rt = r.get("runtime") or {}
        table.add_row(r["config"], "—" if r.get("layer_error") is None else f"{r['layer_error']:.4f}",
                      "—" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}",
                      "—" if r["ssim"] is None else f"{r['ssim']:.4f}",
                      "—" if r["adherence"] is None else f"{100 * r['adherence']:.1f}",
                      qb.bits_cell(rt),
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
