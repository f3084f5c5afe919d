"""`dq bench e2e`: full-size end-to-end speed, memory and size, dq's configurations against BF16 and
torchao in one run, over attention backends and torch.compile on/off.

What one row measures (one model, resolution, configuration, attention backend, compile setting):

- forward_ms: one transformer call (Wan: one CFG branch of one expert; LTX-Video and CogVideoX
  batch both branches into one call), median over the measured run's calls;
- step_ms / e2e_s: one denoising step (every CFG forward, the guidance and the scheduler step) and
  N of them, as the real diffusers pipeline runs them (text encoder and VAE left out: the
  pipeline takes text embeddings and returns latents);
- peak_memory_gib: torch.cuda.max_memory_allocated over the measured run, every resident
  transformer included; peak_one_expert_gib: the same less the other experts' resident bytes
  (Wan 2.2 A14B keeps two);
- weights_bytes (parameters and buffers as held) and checkpoint_bytes (the state dict as a
  safetensors file would hold it);
- breakdown: per step, linears / attention / other, from CUDA events around every linear layer
  and attention module in one extra eager run (hooks would split compiled graphs, so compiled
  rows have none). Events time the GPU stream without synchronising, so the instrumented run's
  step time stays within a few percent of the plain one (both are in the row).

Full-size models are built with random weights from the real diffusers configs (bench_models.py),
directly on the device: the modules are created on the meta device and each parameter is then
allocated and filled where it runs, in the dtype diffusers' loader gives it (fp32 for the modules a
model keeps in fp32). dq's configurations apply dq's recipes to those weights with data-free fits.
On the built-in `dq-tiny` (trained weights) the rows also get PSNR/SSIM against the BF16 video.

bench_configs.py holds what each configuration does to a workload (dq's recipes with data-free fits,
torchao). bench_timing.py holds how time is measured (the clock, the forward and breakdown marks,
regional torch.compile).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from dq_cli import bench_report as br
from dq_cli.bench import weights_bytes
from dq_cli.bench_configs import CONFIGS, DEFAULT_CONFIGS, DQ_RECIPES, Skip, apply_config
from dq_cli.bench_models import VAE_ATTRS, BenchModel
from dq_cli.bench_timing import Clock, ForwardTimer, run_breakdown, timed_run
from dq_cli.compile import MODES as COMPILE_MODES
from dq_cli.compile import RegionalCompile
from dq_cli.compile import refusal as compile_refusal
from dq_cli.errors import DQError

DEFAULT_PROMPT = "a red circle moving right on a blue background"  # dq-tiny's world


@dataclass
class Options:
    steps: int = 2
    warmup_steps: int | None = None     # None: as many as the measured run (every cube size, expert and shape)
    seed: int = 0
    breakdown: bool = True
    compile_backend: str = "inductor"
    compile_mode: str = "default"       # torch.compile's mode; "reduce-overhead" replays each block as a CUDA graph
    guidance: float | None = None


@dataclass
class Row:
    key: str
    model: str
    resolution: str
    config: str
    attention: str
    compile: bool
    status: str = "ok"                  # ok | skipped | failed
    reason: str | None = None
    random_weights: bool = True
    tokens: int | None = None
    steps: int | None = None
    forward_ms: float | None = None     # median transformer call
    forward_ms_all: list[float] = field(default_factory=list)
    forward_batch: int | None = None
    forwards: dict[str, int] = field(default_factory=dict)   # calls per expert in the measured run
    step_ms: float | None = None        # median denoising step
    e2e_s: float | None = None
    warmup_s: float | None = None       # the warm-up run (compilation and autotuning included)
    peak_memory_gib: float | None = None
    peak_one_expert_gib: float | None = None
    weights_bytes: int | None = None
    checkpoint_bytes: int | None = None
    breakdown: dict | None = None       # per step: linears_ms, attention_ms, other_ms, total_ms
    psnr_db: float | None = None
    ssim: float | None = None
    vs_bf16: float | None = None        # forward speed-up against bf16 with SDPA and the same compile mode
    e2e_vs_bf16: float | None = None
    runtime: dict | None = None         # 6Bit: activation bits, route mix, TDC skips
    attention_stats: dict | None = None
    build_s: float | None = None
    notes: list[str] = field(default_factory=list)


def row_key(model: str, resolution: str, config: str, attention: str, compiled: bool) -> str:
    return f"{model}@{resolution}/{config}/{attention}/{'compile' if compiled else 'eager'}"


# ---- workloads: a model ready to sample ----------------------------------------------------------------
@dataclass
class Workload:
    adapter: object                     # dq_cli.models.base.Adapter
    random_weights: bool
    frames: int
    height: int
    width: int
    guidance: float
    min_steps: int
    run: Callable[..., torch.Tensor]    # run(steps, on_step=None) -> output (latents, or a uint8 video)

    @property
    def device(self) -> torch.device:
        return next(iter(self.adapter.transformers().values())).device


def random_init_(t: torch.Tensor, name: str, gen: torch.Generator) -> None:
    """LeCun-normal for matrices and convolutions (std 1/√fan_in: activations keep their scale through
    any width and depth), ones for norm scales, zeros for biases."""
    if t.dim() >= 2:
        fan_in = math.prod(t.shape[1:])
        t.normal_(0.0, 1.0 / math.sqrt(max(fan_in, 1)), generator=gen)
    elif name.endswith("bias"):
        t.zero_()
    else:
        t.fill_(1.0)


def build_transformer(config: dict, device: str, dtype: torch.dtype, seed: int) -> nn.Module:
    """A diffusers transformer of `config` with random weights, allocated on `device` only: built on the
    meta device (buffers, small and computed, stay real), then each parameter made where it runs, in
    the dtype `from_pretrained(torch_dtype=dtype)` gives it."""
    import diffusers
    from accelerate import init_empty_weights

    cls = getattr(diffusers, config["_class_name"], None)
    if cls is None:
        raise DQError(f"transformer class {config['_class_name']!r} is not in diffusers {diffusers.__version__}")
    with init_empty_weights():
        model = cls.from_config(config)
    keep_fp32 = cls._keep_in_fp32_modules or []
    meta = torch.device(device).type == "meta"  # shapes and dtypes only (tests of the full-size configs)
    gen = None if meta else torch.Generator(device=device).manual_seed(seed)
    for name, param in list(model.named_parameters()):
        dt = torch.float32 if any(k in name.split(".") for k in keep_fp32) else dtype
        value = torch.empty(param.shape, dtype=dt, device=device)
        if not meta:
            random_init_(value, name, gen)
        parent, _, leaf = name.rpartition(".")
        (model.get_submodule(parent) if parent else model)._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    return model.to(device).eval()


def build_pipeline(spec: BenchModel, device: str, dtype: torch.dtype, seed: int):
    """The model's diffusers pipeline with random transformers and no VAE, text encoder or tokenizer."""
    import inspect

    import diffusers

    transformers = {c: build_transformer(cfg, device, dtype, seed + i) for i, (c, cfg) in
                    enumerate(spec.transformers.items())}
    scheduler_cls = getattr(diffusers, spec.scheduler["_class_name"])
    pipe_cls = getattr(diffusers, spec.pipeline)
    params = inspect.signature(pipe_cls.__init__).parameters
    kwargs = {k: None for k, p in params.items() if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    kwargs.update(transformers)
    kwargs["scheduler"] = scheduler_cls.from_config(spec.scheduler)
    kwargs.update({k: v for k, v in spec.pipeline_config.items() if k in params})
    pipe = pipe_cls(**kwargs)
    t_attr, s_attr = VAE_ATTRS[spec.family]
    setattr(pipe, t_attr, spec.vae_factors[0])
    setattr(pipe, s_attr, spec.vae_factors[1])
    return pipe


def random_workload(spec: BenchModel, resolution: str | None, device: str, dtype: torch.dtype, seed: int,
                    guidance: float | None = None) -> Workload:
    from dq_cli.models import ADAPTERS

    _, (f, h, w) = spec.resolution(resolution)
    pipe = build_pipeline(spec, device, dtype, seed)
    adapter = ADAPTERS[spec.family](pipe, f"{spec.name} (random weights)")
    gen = torch.Generator("cpu").manual_seed(seed)
    shape = (1, spec.text_tokens, spec.text_dim)
    embeds = torch.randn(shape, generator=gen).to(device, dtype)
    negative = torch.randn(shape, generator=gen).to(device, dtype)
    g = spec.guidance if guidance is None else guidance

    def run(steps: int, on_step=None) -> torch.Tensor:
        call = dict(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=steps,
                    guidance_scale=g, num_frames=f, height=h, width=w, output_type="latent",
                    generator=torch.Generator("cpu").manual_seed(seed), max_sequence_length=spec.text_tokens)
        if spec.family == "ltx":
            mask = torch.ones(shape[:2], dtype=torch.long, device=device)
            call.update(prompt_attention_mask=mask, negative_prompt_attention_mask=mask)
        return sample(adapter, call, steps, on_step)

    return Workload(adapter, True, f, h, w, g, 2 if spec.family == "ltx" else 1, run)


def sample(adapter, call: dict, steps: int, on_step=None) -> torch.Tensor:
    """One pipeline call through `Adapter.run_pipeline` (dq's per-step state kept); `on_step(i)`."""
    adapter.pipe.set_progress_bar_config(disable=True)
    return adapter.run_pipeline(adapter.pipe, call, steps, None if on_step is None else lambda i, t: on_step(i))


def tiny_workload(device: str, dtype: str, seed: int, prompt: str, frames: int, height: int, width: int,
                  guidance: float | None = None) -> Workload:
    """The built-in dq-tiny with its trained weights: its outputs are videos worth comparing."""
    from dq_cli.models import load_model

    adapter = load_model("dq-tiny", device=device, dtype=dtype)
    g = adapter.defaults.guidance if guidance is None else guidance

    def run(steps: int, on_step=None) -> torch.Tensor:
        return adapter.generate(prompt, steps=steps, guidance=g, seed=seed, frames=frames, height=height,
                                width=width, on_step=(lambda s: on_step(s.step)) if on_step else None)

    return Workload(adapter, not adapter.trained, frames, height, width, g, 1, run)


# ---- measuring -------------------------------------------------------------------------------------------
def measure(workload: Workload, row: Row, options: Options, log: Callable[[str], None]) -> torch.Tensor | None:
    """Fill `row` for the workload as it is (configured); returns the measured run's output."""
    adapter = workload.adapter
    clock = Clock(workload.device)
    cuda = clock.cuda
    stats = adapter.set_attention(row.attention)
    output = None
    try:
        if row.compile and (why := compile_refusal(adapter, options.compile_mode)) is not None:
            raise Skip(why)
        compiled = (RegionalCompile(adapter, options.compile_backend, options.compile_mode) if row.compile
                    else nullcontext())
        with compiled:
            t0 = time.perf_counter()
            warmup = options.steps if options.warmup_steps is None else options.warmup_steps
            if warmup:
                workload.run(max(warmup, workload.min_steps))
            clock.sync()
            row.warmup_s = time.perf_counter() - t0
            if adapter.runtime is not None:
                adapter.runtime.reset()
            stats.reset()
            if cuda:
                torch.cuda.reset_peak_memory_stats(workload.device)
            with ForwardTimer(adapter, clock) as timer:
                output, step_ms, row.e2e_s = timed_run(workload, options.steps, clock)
            if cuda:
                peak = torch.cuda.max_memory_allocated(workload.device)
                row.peak_memory_gib = peak / 2**30
                sizes = [br.module_bytes(m) for m in adapter.transformers().values()]
                if len(sizes) > 1:
                    row.peak_one_expert_gib = (peak - (sum(sizes) - max(sizes))) / 2**30
            forwards = timer.times_ms()
            row.forward_ms_all = [round(v, 4) for v in forwards]
            row.forward_ms = statistics.median(forwards) if forwards else None
            row.forward_batch = timer.calls[0][1] if timer.calls else None
            row.forwards = {c: sum(1 for call in timer.calls if call[0] == c) for c in adapter.transformers()}
            row.step_ms = statistics.median(step_ms) if step_ms else None
            row.steps = len(step_ms)
            grid, text = adapter.state.grid, adapter.state.text_tokens
            row.tokens = math.prod(grid) + text if all(grid) else None
            if adapter.runtime is not None:
                row.runtime = adapter.runtime.summary()
            if row.attention != "sdpa":
                row.attention_stats = stats.as_dict()
                graphed = row.compile and options.compile_mode == "reduce-overhead"  # replays run no Python
                if not stats.routed and not graphed:
                    row.notes.append(f"attention {row.attention}: no call reached the kernel ({dict(stats.fallback)})")
            if row.compile:
                row.notes.append(compiled.summary())
            if options.breakdown and not row.compile:
                row.breakdown = run_breakdown(workload, clock, max(workload.min_steps, 1))
        if isinstance(output, torch.Tensor) and output.is_floating_point() and not bool(torch.isfinite(output).all()):
            row.notes.append("the output holds NaN/inf (random weights overflowed the dtype?)")
    finally:
        adapter.set_attention("sdpa")
        adapter.attention = None
    return output


# ---- what to run -----------------------------------------------------------------------------------------
@dataclass
class Plan:
    model: str
    resolution: str
    make: Callable[[], Workload]
    configs: list[str]
    attentions: list[str]
    compiles: list[bool]
    options: Options
    recipe_overrides: dict[str, str]
    settings: dict

    def settings_with(self, info: dict) -> dict:
        return self.settings | {k: v for k, v in info.items() if k not in self.settings or k == "source"}


COMPILE_CHOICES = {"off": [False], "on": [True], "off,on": [False, True], "on,off": [True, False]}


def plan(*, model: str, resolution: str | None, configs: str | None, attention: list[str], compile_: str,
         dtype: str, recipe_overrides: list[str], num_layers: int | None, frames: int | None, height: int | None,
         width: int | None, prompt: str, device: str, options: Options) -> Plan:
    """Check every choice (a bad one is a DQError naming the flag) before anything is built."""
    from dq_cli import bench_models
    from dq_cli.models import resolve_dtype
    from dq_cli.recipe import resolve

    chosen = [c.strip() for c in (configs or ",".join(DEFAULT_CONFIGS)).split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CONFIGS]
    if unknown or not chosen:
        raise DQError(f"--configs {unknown[0] if unknown else repr(configs)}: unknown; choose from {', '.join(CONFIGS)}")
    compiles = COMPILE_CHOICES.get(compile_.replace(" ", ""))
    if compiles is None:
        raise DQError(f"--compile {compile_}: expected off, on or off,on")
    if options.compile_mode not in COMPILE_MODES:
        raise DQError(f"--compile-mode {options.compile_mode}: expected one of {', '.join(COMPILE_MODES)}")
    if dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise DQError(f"--dtype {dtype}: expected auto, bfloat16, float16 or float32")
    overrides = {}
    for item in recipe_overrides:
        config, sep, recipe = item.partition("=")
        if not sep or config not in DQ_RECIPES:
            raise DQError(f"--recipe {item}: expected CONFIG=RECIPE with CONFIG one of {', '.join(DQ_RECIPES)}")
        resolve(recipe)  # a missing recipe is the user's error, before anything is built
        overrides[config] = recipe
    attentions = list(dict.fromkeys(attention)) or ["sdpa"]
    seed, guidance = options.seed, options.guidance
    if model == "dq-tiny":
        from dq_cli.models.dq_tiny import DqTinyAdapter

        if resolution is not None:
            raise DQError("--resolution: dq-tiny takes --frames/--height/--width")
        if num_layers:
            raise DQError("--num-layers: for the random-weight models only (dq-tiny keeps its trained weights)")
        d = DqTinyAdapter.defaults
        f, h, w = frames or d.frames, height or d.height, width or d.width
        label = f"{f}x{h}x{w}"
        make = lambda: tiny_workload(device, dtype, seed, prompt, f, h, w, guidance)  # noqa: E731
        info = {"model": "dq-tiny", "source": "built-in (trained weights)"}
    else:
        spec = bench_models.resolve(model)
        if num_layers:
            spec = spec.with_layers(num_layers)
        if spec.family == "ltx" and options.steps < 2:
            raise DQError(f"--steps {options.steps}: the LTX-Video scheduler (shift_terminal) needs at least 2 steps")
        label, (f, h, w) = spec.resolution(resolution)
        if frames or height or width:
            f, h, w = frames or f, height or h, width or w
            label = f"{f}x{h}x{w}"
        torch_dtype = resolve_dtype(dtype, device)
        make = lambda: random_workload(spec, label, device, torch_dtype, seed, guidance)  # noqa: E731
        info = {"model": spec.name, "source": spec.source}
    settings = info | {"resolution": label, "frames": f, "height": h, "width": w, "steps": options.steps,
                       "warmup_steps": options.steps if options.warmup_steps is None else options.warmup_steps,
                       "seed": seed, "configs": chosen, "attention": attentions,
                       "compile": ["on" if c else "off" for c in compiles], "compile_backend": options.compile_backend,
                       "compile_mode": options.compile_mode,
                       "breakdown": options.breakdown, "recipes": overrides, "num_layers": num_layers}
    return Plan(info["model"], label, make, chosen, attentions, compiles, options, overrides, settings)


def run_plan(p: Plan, log: Callable[[str], None] = print, on_row=None) -> tuple[list[Row], dict]:
    return run(p.model, p.resolution, p.make, p.configs, p.attentions, p.compiles, p.options, p.recipe_overrides,
               log=log, on_row=on_row)


# ---- the run --------------------------------------------------------------------------------------------
def run(model: str, resolution: str, make_workload: Callable[[], Workload], configs: list[str],
        attentions: list[str], compiles: list[bool], options: Options, recipe_overrides: dict[str, str] | None = None,
        log: Callable[[str], None] = print, on_row: Callable[[list[Row], dict], None] | None = None
        ) -> tuple[list[Row], dict]:
    """Every configuration × attention × compile. Each configuration starts from a freshly built model
    (the same random weights, by seed). A row that fails is recorded as failed and the run goes on.
    Returns the rows and what the workload was (frames, size, guidance, random weights)."""
    rows: list[Row] = []
    outputs: dict[str, torch.Tensor] = {}
    info: dict = {}
    for config in configs:
        t0 = time.perf_counter()
        workload = notes = error = sizes = None
        try:
            workload = make_workload()
            info = {"frames": workload.frames, "height": workload.height, "width": workload.width,
                    "guidance": workload.guidance, "random_weights": workload.random_weights,
                    "family": workload.adapter.family, "source": workload.adapter.source,
                    "dtype": str(next(iter(workload.adapter.transformers().values())).dtype).removeprefix("torch.")}
            notes = apply_config(workload, config, recipe_overrides)
            # the configuration's sizes, the same for each attention and compile row
            sizes = weights_bytes(workload.adapter), br.state_dict_bytes(workload.adapter.transformers())
            _sync(workload.device)
            log(f"{config}: built and configured in {time.perf_counter() - t0:.1f} s")
        except Skip as e:
            error = ("skipped", str(e))
        except DQError:
            raise
        except Exception as e:  # noqa: BLE001 - record, go on with the other configurations
            error = ("failed", _describe(e))
            log(traceback.format_exc())
        build_s = time.perf_counter() - t0
        for attention in attentions:
            for compiled in compiles:
                row = Row(key=row_key(model, resolution, config, attention, compiled), model=model,
                          resolution=resolution, config=config, attention=attention, compile=compiled,
                          random_weights=info.get("random_weights", True), build_s=round(build_s, 3))
                if error is not None:
                    row.status, row.reason = error
                else:
                    row.notes += list(notes)
                    try:
                        row.weights_bytes, row.checkpoint_bytes = sizes
                        out = measure(workload, row, options, log)
                        if out is not None and not workload.random_weights:
                            outputs[row.key] = out
                    except Skip as e:
                        row.status, row.reason = "skipped", str(e)
                    except DQError:
                        raise
                    except Exception as e:  # noqa: BLE001
                        row.status, row.reason = "failed", _describe(e)
                        log(traceback.format_exc())
                        _free()
                rows.append(row)
                log(line(row))
                if on_row is not None:
                    on_row(rows, info)
        del workload
        _free()
    _quality(rows, outputs)
    return rows, info


def _describe(e: Exception) -> str:
    text = str(e).strip().splitlines()
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of GPU memory: " + (text[0] if text else "")
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _quality(rows: list[Row], outputs: dict[str, torch.Tensor]) -> None:
    """PSNR/SSIM of each video against the bf16 / SDPA / eager one (built-in model only)."""
    from dq_cli.quality import psnr, ssim

    for row in rows:
        # the reference: bf16 with SDPA, eager if it ran, else compiled
        ref_key = next((k for k in (row_key(row.model, row.resolution, "bf16", "sdpa", c) for c in (False, True))
                        if k in outputs), None)
        out = outputs.get(row.key)
        if ref_key is None or out is None or row.key == ref_key:
            continue
        ref = outputs[ref_key]
        row.psnr_db = psnr(out, ref)
        try:
            row.ssim = ssim(out, ref)
        except ValueError as e:  # frames smaller than SSIM's window
            row.notes.append(f"no SSIM: {e}")


def fill_ratios(rows: list[dict]) -> None:
    """Speed-ups against bf16 with SDPA in the same compile mode (the baseline a user replaces, so a row
    with dq's 8-bit attention shows what the attention gains too), for a report's rows that lack one:
    every row of a fresh report, and in a merged one the rows whose bf16 came from another run."""
    index = {r["key"]: r for r in rows}
    for row in rows:
        base = index.get(row_key(row["model"], row["resolution"], "bf16", "sdpa", row["compile"]))
        if base is None or base["status"] != "ok" or row["status"] != "ok":
            continue
        for ratio, metric in (("vs_bf16", "forward_ms"), ("e2e_vs_bf16", "e2e_s")):
            if row.get(ratio) is None and base.get(metric) and row.get(metric):
                row[ratio] = base[metric] / row[metric]


def line(row: Row) -> str:
    """One progress line per row."""
    head = f"{row.config} / {row.attention} / {'compile' if row.compile else 'eager'}"
    if row.status != "ok":
        return f"{head}: {row.status} ({row.reason})"
    parts = [f"forward {row.forward_ms:.1f} ms", f"step {row.step_ms:.1f} ms", f"e2e {row.e2e_s:.2f} s"]
    if row.peak_memory_gib is not None:
        parts.append(f"peak {row.peak_memory_gib:.1f} GiB")
    if row.breakdown:
        b = row.breakdown
        parts.append(f"linears/attention/other {b['linears_ms']:.0f}/{b['attention_ms']:.0f}/{b['other_ms']:.0f} ms per step")
    return f"{head}: " + ", ".join(parts)


NOTES = {
    "latency": "forward = one transformer call (Wan: one CFG branch of one expert; LTX-Video and CogVideoX batch "
               "both branches), median over the measured run; step = one denoising step (every CFG forward, "
               "guidance, scheduler), median; e2e = the N measured steps (no text encoder, no VAE). A warm-up "
               "run (compilation, autotuning) comes first. × BF16 SDPA = forward speed-up against bf16 with SDPA "
               "in the same compile mode (eager against eager, compiled against compiled).",
    "breakdown": "breakdown (ms per step, eager rows): timing marks around every linear layer and attention "
                 "module in one extra run; linears = every nn.Linear / QuantLinear; attention = attention modules "
                 "less their linears (SDPA or the 8-bit kernel, QK norms, RoPE); other = the rest (norms, "
                 "modulation, activations, embeddings, guidance, scheduler).",
    "compile": "torch.compile: each transformer block compiled (regional), dq's quantized linears and 8-bit "
               "attention traced into it (custom ops); 6Bit's routed linears run eagerly between the compiled "
               "pieces of a block (graph breaks), its hook's routing and TDC decisions outside them.",
    "sizes": "weights = parameters and buffers as held in memory; checkpoint = the state dict as a safetensors "
             "file (tensors and header; dq's metadata not counted).",
    "peak": "peak = torch.cuda.max_memory_allocated over the measured run, every resident transformer included; "
            "1-expert peak = peak less the other experts' weights (Wan 2.2 A14B keeps two resident).",
    "random": "RANDOM WEIGHTS: the real diffusers configuration with LeCun-normal weights, built on the device; "
              "speed, memory and size are the model's, outputs are not (no quality columns).",
    "short_warmup": "the warm-up run is shorter than the measured run ({warmup} of {steps} steps): a cube size, expert or "
                    "shape first met after step {warmup} is compiled and autotuned inside the measurement, so step "
                    "and e2e times (and with few forwards the forward median) may include it",
    "data_free": "dq's configurations on random weights use data-free fits (smoothing λ = 1; low-rank branch from a "
                 "randomized SVD of each weight): they cost at inference what calibrated ones cost.",
}


def report(rows: list[Row], env: dict, settings: dict) -> dict:
    notes = []
    if settings.get("random_weights"):
        notes += [NOTES["random"], NOTES["data_free"]]
    notes += [NOTES["latency"], NOTES["sizes"]]
    warmup, steps = settings.get("warmup_steps"), settings.get("steps")
    if warmup is not None and steps is not None and warmup < steps:
        notes.append(NOTES["short_warmup"].format(warmup=warmup, steps=steps))
    if any(r.peak_memory_gib is not None for r in rows):
        notes.append(NOTES["peak"])
    if any(r.breakdown for r in rows):
        notes.append(NOTES["breakdown"])
    if any(r.compile for r in rows):
        notes.append(NOTES["compile"])
    for config in dict.fromkeys(r.config for r in rows):
        notes.append(f"{config}: {CONFIGS.get(config, '')}")
    docs = [asdict(r) for r in rows]
    fill_ratios(docs)  # also in the reports written after each row: one cut short keeps its ratios
    return br.new_report("e2e", env, settings, docs, notes)


# ---- markdown ---------------------------------------------------------------------------------------------
def _f(v, fmt: str = ".2f", scale: float = 1.0) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v * scale, fmt)


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = []
    groups: dict[tuple, list[dict]] = {}
    for r in doc["rows"]:
        groups.setdefault((r["model"], r["resolution"]), []).append(r)
    for (model, resolution), rows in groups.items():
        tokens = next((r["tokens"] for r in rows if r.get("tokens")), None)
        steps = next((r["steps"] for r in rows if r.get("steps")), None)
        random = rows[0].get("random_weights")
        lines.append(f"### {model} @ {resolution}" + (f" — {tokens:,} tokens" if tokens else "")
                     + (f", {steps} steps with CFG" if steps else "") + (" — random weights" if random else ""))
        lines.append("")
        lines.append("| config | attention | compile | forward (ms) | × BF16 SDPA | step (ms) | e2e (s) | peak (GiB) | "
                     "1-expert peak (GiB) | weights (GiB) | checkpoint (GiB) | linears / attention / other (ms per step) "
                     "| PSNR (dB) | SSIM |")
        lines.append("|" + "---|" * 14)
        for r in rows:
            head = f"| {r['config']} | {r['attention']} | {'on' if r['compile'] else 'off'} |"
            if r["status"] != "ok":
                lines.append(f"{head} {r['status']}: {r['reason']} |" + " |" * 10)
                continue
            b = r.get("breakdown")
            split = "—" if not b else f"{b['linears_ms']:.1f} / {b['attention_ms']:.1f} / {b['other_ms']:.1f}"
            lines.append(
                f"{head} {_f(r['forward_ms'], '.1f')} | {_f(r.get('vs_bf16'), '.2f')}{'×' if r.get('vs_bf16') else ''} | "
                f"{_f(r['step_ms'], '.1f')} | {_f(r['e2e_s'], '.2f')} | {_f(r['peak_memory_gib'])} | "
                f"{_f(r.get('peak_one_expert_gib'))} | {_f(r['weights_bytes'], '.2f', 2**-30)} | "
                f"{_f(r['checkpoint_bytes'], '.2f', 2**-30)} | {split} | {_f(r.get('psnr_db'))} | {_f(r.get('ssim'), '.4f')} |")
        lines.append("")
    versions = env.get("versions", {})
    commit = env.get("git_commit")
    lines.append(f"Device: {br.device_label(env)}" + (f", driver {env['driver']}" if env.get("driver") else "")
                 + (f", CUDA {env['cuda']}" if env.get("cuda") else "") + f"; torch {env.get('torch')}, "
                 f"triton {versions.get('triton')}, diffusers {versions.get('diffusers')}, torchao "
                 f"{versions.get('torchao')}; dq {env.get('dq')}" + (f" @ {commit[:12]}" if commit else "")
                 + (" (uncommitted changes)" if env.get("git_dirty") else "") + ".")
    if env.get("command"):
        lines.append(f"Command: `{env['command']}`")
    if switches := br.switches_line(env):
        lines.append(switches)
    lines.append("")
    lines += [f"- {n}" for n in doc.get("notes", [])]
    # notes shared by every row of a configuration once, the rest per row
    extra = []
    by_config: dict[tuple, list[dict]] = {}
    for r in doc["rows"]:
        by_config.setdefault((r["model"], r["resolution"], r["config"]), []).append(r)
    for (model, resolution, config), rows in by_config.items():
        common = [n for n in rows[0].get("notes", []) if all(n in r.get("notes", []) for r in rows)]
        if common:
            extra.append(f"- {model}@{resolution}/{config}: " + "; ".join(common))
        for r in rows:
            own = [n for n in r.get("notes", []) if n not in common]
            if own:
                extra.append(f"- {r['key']}: " + "; ".join(own))
    if extra:
        lines += ["", "Per configuration and row:", *extra]
    return "\n".join(lines) + "\n"
