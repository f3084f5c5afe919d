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
"""

from __future__ import annotations

import gc
import math
import re
import statistics
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from dq_cli import bench_report as br
from dq_cli.bench_models import VAE_ATTRS, BenchModel
from dq_cli.errors import DQError

# ---- configurations -----------------------------------------------------------------------------------
DQ_RECIPES = {  # family -> recipe, per dq configuration (a recipe's `quantization` applies by role to any model)
    "w4a4": {"ltx": "ltx_w4a4.yaml", "cogvideox": "cogvideox_w4a4.yaml", "*": "wan22_w4a4.yaml"},
    "w4a4-recipe": {"ltx": "ltx_w4a4.yaml", "cogvideox": "cogvideox_w4a4.yaml", "*": "wan22_w4a4.yaml"},
    "6bit": {"cogvideox": "cogvideox_6bit.yaml", "*": "wan22_6bit.yaml"},
    "w8a8": {"*": "tiny_w8a8.yaml"},
}
CONFIGS = {
    "bf16": "unquantized, in the model's dtype (bfloat16 on a GPU)",
    "w4a4": "dq DeltaQuant W4A4 in the Hopper kernel format: the recipe's layers with INT4 weights and "
            "activations in int4_pow2 (power-of-two group scales), FP8 core tokens (dq::w4a4_linear on CUDA)",
    "w4a4-recipe": "dq DeltaQuant W4A4 exactly as the recipe says (INT4 g64 weights, NVFP4 deltas): "
                   "PyTorch reference path (no Hopper kernel for these formats)",
    "6bit": "dq 6Bit-Diffusion: NVFP4 weights, per-step NVFP4/INT8 activation routing and the Temporal Delta "
            "Cache (PyTorch reference path: no NVFP4 kernel on Hopper)",
    "w8a8": "dq W8A8: INT8 weights per channel, INT8 activations per token (dq::w8a8_linear on CUDA)",
    "torchao-fp8": "torchao Float8DynamicActivationFloat8WeightConfig, rowwise scales",
    "torchao-int8": "torchao Int8DynamicActivationInt8WeightConfig",
}
DEFAULT_CONFIGS = ("bf16", "w4a4", "6bit", "w8a8", "torchao-fp8", "torchao-int8")
BLOCK_ROLES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.out", "cross_attn.q", "cross_attn.k",
               "cross_attn.v", "cross_attn.out", "ffn.up", "ffn.down")
DEFAULT_PROMPT = "a red circle moving right on a blue background"  # dq-tiny's world


class Skip(Exception):
    """A row that cannot run here (a missing optional package, a device without the instructions)."""


@dataclass
class Options:
    steps: int = 2
    warmup_steps: int | None = None     # None: as many as the measured run (every cube size, expert and shape)
    seed: int = 0
    breakdown: bool = True
    compile_backend: str = "inductor"
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
    vs_bf16: float | None = None        # forward speed-up against bf16 with the same attention and compile
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
    name: str
    random_weights: bool
    resolution: str
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

    label, (f, h, w) = spec.resolution(resolution)
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

    return Workload(adapter, spec.name, True, label, f, h, w, g, 2 if spec.family == "ltx" else 1, run)


def sample(adapter, call: dict, steps: int, on_step=None) -> torch.Tensor:
    """One pipeline call with dq's forward state kept as Adapter.generate keeps it (the step, for
    DeltaQuant's cube schedule and 6Bit's routing)."""
    state = adapter.state
    state.step, state.num_steps = 0, steps

    def step_end(pipe, i, t, kwargs):
        if on_step is not None:
            on_step(i)
        state.step = i + 1
        return {}

    call = dict(call, callback_on_step_end=step_end)
    adapter.pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        try:
            out = adapter.pipe(**adapter.pipeline_kwargs(call)).frames
        except ValueError as e:  # the pipeline's own check of sizes and frames
            raise DQError(f"{adapter.family}: {e}") from None
    return out


def tiny_workload(device: str, dtype: str, seed: int, prompt: str, frames: int, height: int, width: int,
                  guidance: float | None = None) -> Workload:
    """The built-in dq-tiny with its trained weights: its outputs are videos worth comparing."""
    from dq_cli.models import load_model

    adapter = load_model("dq-tiny", device=device, dtype=dtype)
    g = adapter.defaults.guidance if guidance is None else guidance

    def run(steps: int, on_step=None) -> torch.Tensor:
        return adapter.generate(prompt, steps=steps, guidance=g, seed=seed, frames=frames, height=height,
                                width=width, on_step=(lambda s: on_step(s.step)) if on_step else None)

    return Workload(adapter, "dq-tiny", not adapter.trained, f"{frames}x{height}x{width}", frames, height, width,
                    g, 1, run)


# ---- applying a configuration ---------------------------------------------------------------------------
def recipe_for(config: str, family: str, overrides: dict[str, str]) -> str:
    if config in overrides:
        return overrides[config]
    table = DQ_RECIPES[config]
    return table.get(family, table["*"])


def apply_config(workload: Workload, config: str, recipe_overrides: dict[str, str] | None = None) -> list[str]:
    """Quantize the workload's model in place; returns notes on what was done. Raises Skip."""
    if config == "bf16":
        return []
    if config.startswith("torchao-"):
        return _apply_torchao(workload, config)
    family = workload.adapter.family
    return _apply_dq(workload, config, recipe_for(config, "wan" if family == "dq-tiny" else family,
                                                  recipe_overrides or {}))


def kernel_format(plan):
    """The Hopper kernel's INT4 format for a plan's 4-bit weights and activations."""
    fmt = {"int4": "int4_pow2", "nvfp4": "int4_pow2"}
    return replace(plan, weight=fmt.get(plan.weight, plan.weight), activation=fmt.get(plan.activation, plan.activation))


def data_free_fit(linear: nn.Linear, plan):
    """What calibration would give SmoothQuant/SVDQuant/DeltaQuant, without data: smoothing λ = 1 and
    the low-rank branch from a randomized SVD of the weight (no refinement). Costs at inference what a
    calibrated fit costs. Returns (smooth, up, down, plan)."""
    from dq_calib.weights import low_rank
    from dq_cli.quant.linear import uses_low_rank, uses_smoothing

    w = linear.weight.detach().float()
    smooth = torch.ones(w.shape[1], device=w.device) if uses_smoothing(plan) else None
    up = down = None
    if uses_low_rank(plan):
        rank = min(plan.rank, max(1, min(w.shape) // 4))
        plan = replace(plan, rank=rank)
        up, down, _ = low_rank(w, rank, plan.weight, plan.group_size, iters=0)
    return smooth, up, down, plan


def _apply_dq(workload: Workload, config: str, recipe_name: str) -> list[str]:
    from dq_cli import recipe as recipes
    from dq_cli.quant.apply import attach_state, set_submodule
    from dq_cli.quant.linear import QuantLinear
    from dq_cli.quant.plan import CALIBRATED_METHODS, plan_layers

    adapter = workload.adapter
    source, text = recipes.resolve(recipe_name)
    recipe = recipes.parse(text, source)
    layers = adapter.linears()
    plans = plan_layers(recipe.quantization, layers, source,
                        hadamard=recipe.predictor.hadamard_block if recipe.predictor else 0)
    if config == "w4a4":
        plans = {n: kernel_format(p) for n, p in plans.items()}
    fitted = 0
    for info in layers:
        plan = plans.get(info.name)
        if plan is None:
            continue
        linear = adapter.module(info)
        smooth = up = down = None
        if plan.method in CALIBRATED_METHODS:
            smooth, up, down, plan = data_free_fit(linear, plan)
            plans[info.name] = plan
            fitted += 1
        quantized = QuantLinear.from_linear(linear, plan, info.name, sees_video=info.sees_video, smooth=smooth,
                                            lora_up=up, lora_down=down)
        set_submodule(adapter.transformers()[info.component], info.module_name, quantized)
        del linear
    attach_state(adapter)
    formats = sorted({f"{p.method} W {p.weight} / A {p.activation}" for p in plans.values()})
    notes = [f"{len(plans)} of {len(layers)} linears quantized by {source.removeprefix('builtin:')} "
             f"({'; '.join(formats)})"]
    if fitted:
        notes.append(f"{fitted} layers fitted data-free (λ = 1, low-rank from a randomized SVD of the weight)")
    if recipe.predictor is not None or recipe.tdc.enabled:
        notes += _install_6bit(adapter, recipe, plans, workload.random_weights)
    return notes


def synthetic_predictor(recipe, plans: dict, in_features: dict[str, int]):
    """A 6Bit predictor without calibration data: α = 0 and a per-layer β that puts layers (weighted by
    input features) on the safe INT8 route in the share that meets the recipe's target bits; kind
    'dynamic', so the first step (no Γ yet) takes INT8 as fitted dynamic routing does."""
    from dq_calib.predictor import ROUTE_BITS, SAFE_ROUTE, LayerPredictor, Predictor

    spec = recipe.predictor
    low = next((r for r in spec.routes if r != SAFE_ROUTE), "nvfp4")
    target = spec.target_bits if spec.target_bits is not None else 6.0
    share = min(1.0, max(0.0, (target - ROUTE_BITS[low]) / (ROUTE_BITS[SAFE_ROUTE] - ROUTE_BITS[low])))
    layers, seen, safe = {}, 0.0, 0.0
    for name in sorted(plans):
        if not re.search(r"(blocks|transformer_blocks)\.\d+\.", name):
            continue
        k = in_features[name]
        to_safe = safe + k / 2 <= share * (seen + k)
        seen += k
        safe += k if to_safe else 0
        layers[name] = LayerPredictor(block=name, alpha=0.0, beta=1.0 if to_safe else 0.0, r2=float("nan"),
                                      resid_std=float("nan"), n=0, in_features=k)
    return Predictor(layers=layers, threshold=0.5, low_route=low, safe_route=SAFE_ROUTE, kind="dynamic",
                     target_bits=target, achieved={"safe_share": safe / seen if seen else 0.0})


def _install_6bit(adapter, recipe, plans: dict, random_weights: bool) -> list[str]:
    from dq_cli.quant.runtime import install
    from dq_cli.quant.tdc import TDCConfig

    notes = []
    predictor = None
    if recipe.predictor is not None:
        in_features = {info.name: info.in_features for info in adapter.linears()}
        predictor = synthetic_predictor(recipe, plans, in_features)
        notes.append(f"synthetic 6Bit predictor (not fitted on data): {len(predictor.layers)} layers, "
                     f"{100 * predictor.achieved['safe_share']:.0f}% of input features on INT8 after the first "
                     f"step, for {predictor.target_bits:g} bits")
    tdc = None
    if recipe.tdc.enabled:
        refresh = recipe.predictor.refresh_ratio if recipe.predictor else None
        tdc = TDCConfig(recipe.tdc.tau, recipe.tdc.max_skips, refresh)
        notes.append(f"TDC on (τ {recipe.tdc.tau:g}, at most {recipe.tdc.max_skips} skips in a row)"
                     + (": its skips on random weights say nothing of a trained model's" if random_weights else ""))
    adapter.runtime = install(adapter, predictor, tdc)
    return notes


def _apply_torchao(workload: Workload, config: str) -> list[str]:
    try:
        from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig,
                                          Int8DynamicActivationInt8WeightConfig, PerRow, quantize_)
    except Exception as e:  # noqa: BLE001 - any import failure makes the row a skipped one
        raise Skip(f"torchao is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    device = workload.device
    fp8 = config == "torchao-fp8"
    if fp8:
        if device.type != "cuda":
            raise Skip("torchao FP8 needs a CUDA GPU with FP8 tensor cores (sm_89 or newer)")
        if torch.cuda.get_device_capability(device) < (8, 9):
            raise Skip(f"torchao FP8 needs sm_89 or newer; this GPU is sm_{''.join(map(str, torch.cuda.get_device_capability(device)))}")
        qconfig = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    elif config == "torchao-int8":
        qconfig = Int8DynamicActivationInt8WeightConfig()
    else:
        raise DQError(f"--configs {config}: unknown torchao configuration")
    adapter = workload.adapter
    wanted = {info.name for info in adapter.linears() if info.role in BLOCK_ROLES}
    done = []
    for component, model in adapter.transformers().items():
        def keep(module, fqn, component=component):
            ok = isinstance(module, nn.Linear) and f"{component}.{fqn}" in wanted
            if ok and fp8:  # FP8 GEMMs need both dimensions in multiples of 16
                ok = module.in_features % 16 == 0 and module.out_features % 16 == 0
            if ok:
                done.append(fqn)
            return ok

        quantize_(model, qconfig, filter_fn=keep)
    if not done:
        raise Skip(f"{config}: no linear layer torchao can take (FP8 needs dimensions in multiples of 16)")
    return [f"torchao {type(qconfig).__name__} on {len(done)} block linears (the layers dq quantizes)"]


# ---- measuring -------------------------------------------------------------------------------------------
class Clock:
    """CUDA events on a GPU (timing the stream without synchronising), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else 1000.0 * (b - a)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


class ForwardTimer:
    """Times every call of the top-level transformers (hooks on them only: compiled blocks inside
    are untouched)."""

    def __init__(self, adapter, clock: Clock):
        self.adapter, self.clock = adapter, clock
        self.calls: list[tuple[str, int, object, object]] = []
        self._handles = []
        self._open: dict[str, tuple[int, object]] = {}

    def __enter__(self):
        for component, model in self.adapter.transformers().items():
            def pre(module, args, kwargs, component=component):
                self._open[component] = (self.adapter.batch_size(args, kwargs), self.clock.mark())

            def post(module, args, output, component=component):
                batch, start = self._open.pop(component)
                self.calls.append((component, batch, start, self.clock.mark()))

            self._handles.append(model.register_forward_pre_hook(pre, with_kwargs=True))
            self._handles.append(model.register_forward_hook(post))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def times_ms(self) -> list[float]:
        return [self.clock.ms(s, e) for _, _, s, e in self.calls]


ATTENTION_MODULE = re.compile(r"(^|\.)attn\d*$")


class Breakdown:
    """Marks around every linear layer and attention module. Attention = the attention modules less
    the linears inside them (the SDPA or 8-bit kernel, QK norms, RoPE); linears = every nn.Linear or
    QuantLinear; other = the rest of the step."""

    def __init__(self, adapter, clock: Clock):
        self.adapter, self.clock = adapter, clock
        self.records: list[tuple[str, bool, object, object]] = []   # (kind, inside attention, start, end)
        self._stack: list[tuple[str, object]] = []
        self._handles = []
        self.linears = self.attentions = 0

    def __enter__(self):
        for model in self.adapter.transformers().values():
            for name, module in model.named_modules():
                if isinstance(module, nn.Linear) or getattr(module, "is_quant_linear", False):
                    kind = "linear"
                    self.linears += 1
                elif ATTENTION_MODULE.search(name) and hasattr(module, "processor"):
                    kind = "attention"
                    self.attentions += 1
                else:
                    continue
                self._handles.append(module.register_forward_pre_hook(lambda m, a, kind=kind: self._push(kind)))
                self._handles.append(module.register_forward_hook(lambda m, a, o: self._pop()))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _push(self, kind: str) -> None:
        self._stack.append((kind, self.clock.mark()))

    def _pop(self) -> None:
        kind, start = self._stack.pop()
        inside = any(k == "attention" for k, _ in self._stack)
        self.records.append((kind, inside, start, self.clock.mark()))

    def totals_ms(self) -> tuple[float, float]:
        """(linears, attention without its linears), summed over the run."""
        lin = lin_in_attn = attn = 0.0
        for kind, inside, start, end in self.records:
            ms = self.clock.ms(start, end)
            if kind == "linear":
                lin += ms
                lin_in_attn += ms if inside else 0.0
            else:
                attn += ms
        return lin, attn - lin_in_attn


def timed_run(workload: Workload, steps: int, clock: Clock) -> tuple[torch.Tensor, list[float], float, object]:
    """(output, per-step ms, end-to-end s, start mark)."""
    marks = []
    clock.sync()
    t0 = time.perf_counter()
    start = clock.mark()
    out = workload.run(steps, on_step=lambda i: marks.append(clock.mark()))
    clock.sync()
    total = time.perf_counter() - t0
    return out, [clock.ms(a, b) for a, b in zip([start] + marks, marks)], total, start


class Compiled:
    """torch.compile on each transformer block (regional compilation, as diffusers'
    `compile_repeated_blocks`). dq's quantized linears and the attention modules routed to dq's 8-bit
    kernel run eagerly inside (graph breaks): their Python-side dispatch (forward state, cube
    schedule, TorchFunctionMode) is not for tracing."""

    def __init__(self, adapter, backend: str):
        self.adapter, self.backend = adapter, backend
        self.blocks: list[nn.Module] = []
        self.wrapped: list[tuple[nn.Module, object]] = []

    def __enter__(self):
        import torch._dynamo
        from dq_cli.attention import HOOK_NAME
        from dq_cli.quant.runtime import transformer_blocks

        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        for model in self.adapter.transformers().values():
            for _, module in model.named_modules():
                registry = getattr(module, "_diffusers_hook", None)
                routed = registry is not None and registry.get_hook(HOOK_NAME) is not None
                if getattr(module, "is_quant_linear", False) or routed:
                    self.wrapped.append((module, module.__dict__.get("forward")))
                    module.forward = torch.compiler.disable(module.forward, recursive=True)
            blocks = [b for _, b in transformer_blocks(model)]
            if not blocks:
                raise DQError(f"torch.compile: found no transformer blocks in {type(model).__name__}")
            for block in blocks:
                block.compile(backend=self.backend)
                self.blocks.append(block)
        return self

    def summary(self) -> str:
        from torch._dynamo.utils import counters

        graphs = counters["stats"].get("unique_graphs", 0)
        breaks = sum(counters["graph_break"].values())
        return (f"torch.compile ({self.backend}): {len(self.blocks)} blocks compiled, {graphs} graphs, "
                f"{breaks} graph breaks; {len(self.wrapped)} dq modules run eagerly inside")

    def __exit__(self, *exc):
        import torch._dynamo

        for block in self.blocks:
            block._compiled_call_impl = None
        for module, original in self.wrapped:
            if original is None:
                del module.forward
            else:
                module.forward = original
        torch._dynamo.reset()


def measure(workload: Workload, row: Row, options: Options, log: Callable[[str], None]) -> torch.Tensor | None:
    """Fill `row` for the workload as it is (configured); returns the measured run's output."""
    adapter = workload.adapter
    clock = Clock(workload.device)
    cuda = clock.cuda
    stats = adapter.set_attention(row.attention)
    output = None
    try:
        if row.compile and adapter.runtime is not None:
            raise Skip("6Bit's per-block routing and TDC decide in Python at every step: not compiled")
        compiled = Compiled(adapter, options.compile_backend) if row.compile else nullcontext()
        with compiled:
            t0 = time.perf_counter()
            warmup = options.steps if options.warmup_steps is None else options.warmup_steps
            if warmup:
                workload.run(max(warmup, workload.min_steps))
            clock.sync()
            row.warmup_s = time.perf_counter() - t0
            if adapter.runtime is not None:
                adapter.runtime.reset()
            stats.routed = 0
            stats.fallback.clear()
            if cuda:
                torch.cuda.reset_peak_memory_stats(workload.device)
            with ForwardTimer(adapter, clock) as timer:
                output, step_ms, row.e2e_s, _ = timed_run(workload, options.steps, clock)
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
                if not stats.routed:
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


def run_breakdown(workload: Workload, clock: Clock, steps: int) -> dict:
    with Breakdown(workload.adapter, clock) as marks:
        _, step_ms, _, _ = timed_run(workload, steps, clock)
    linears, attention = marks.totals_ms()
    total = sum(step_ms)
    n = max(len(step_ms), 1)
    return {"steps": len(step_ms), "total_ms": total / n, "linears_ms": linears / n, "attention_ms": attention / n,
            "other_ms": (total - linears - attention) / n, "linear_modules": marks.linears,
            "attention_modules": marks.attentions}


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
        workload = notes = error = None
        try:
            workload = make_workload()
            info = {"frames": workload.frames, "height": workload.height, "width": workload.width,
                    "guidance": workload.guidance, "random_weights": workload.random_weights,
                    "family": workload.adapter.family, "source": workload.adapter.source,
                    "dtype": str(next(iter(workload.adapter.transformers().values())).dtype).removeprefix("torch.")}
            notes = apply_config(workload, config, recipe_overrides)
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
                        row.weights_bytes = sum(br.module_bytes(m) for m in workload.adapter.transformers().values())
                        row.checkpoint_bytes = br.state_dict_bytes(workload.adapter.transformers())
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
    _ratios(rows)
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


def _ratios(rows: list[Row]) -> None:
    index = {r.key: r for r in rows}
    for row in rows:
        base = index.get(row_key(row.model, row.resolution, "bf16", row.attention, row.compile))
        if base is None or base.status != "ok" or row.status != "ok":
            continue
        if base.forward_ms and row.forward_ms:
            row.vs_bf16 = base.forward_ms / row.forward_ms
        if base.e2e_s and row.e2e_s:
            row.e2e_vs_bf16 = base.e2e_s / row.e2e_s


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
               "run (compilation, autotuning) comes first.",
    "breakdown": "breakdown (ms per step, eager rows): timing marks around every linear layer and attention "
                 "module in one extra run; linears = every nn.Linear / QuantLinear; attention = attention modules "
                 "less their linears (SDPA or the 8-bit kernel, QK norms, RoPE); other = the rest (norms, "
                 "modulation, activations, embeddings, guidance, scheduler).",
    "compile": "torch.compile: each transformer block compiled (regional); dq's quantized linears and 8-bit "
               "attention modules run eagerly between compiled regions.",
    "sizes": "weights = parameters and buffers as held in memory; checkpoint = the state dict as a safetensors "
             "file (tensors and header; dq's metadata not counted).",
    "peak": "peak = torch.cuda.max_memory_allocated over the measured run, every resident transformer included; "
            "1-expert peak = peak less the other experts' weights (Wan 2.2 A14B keeps two resident).",
    "random": "RANDOM WEIGHTS: the real diffusers configuration with LeCun-normal weights, built on the device; "
              "speed, memory and size are the model's, outputs are not (no quality columns).",
    "data_free": "dq's configurations on random weights use data-free fits (smoothing λ = 1; low-rank branch from a "
                 "randomized SVD of each weight): they cost at inference what calibrated ones cost.",
}


def report(rows: list[Row], env: dict, settings: dict) -> dict:
    notes = []
    if settings.get("random_weights"):
        notes += [NOTES["random"], NOTES["data_free"]]
    notes += [NOTES["latency"], NOTES["sizes"]]
    if any(r.peak_memory_gib is not None for r in rows):
        notes.append(NOTES["peak"])
    if any(r.breakdown for r in rows):
        notes.append(NOTES["breakdown"])
    if any(r.compile for r in rows):
        notes.append(NOTES["compile"])
    for config in dict.fromkeys(r.config for r in rows):
        notes.append(f"{config}: {CONFIGS.get(config, '')}")
    return br.new_report("e2e", env, settings, [asdict(r) for r in rows], notes)


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
        lines.append("| config | attention | compile | forward (ms) | × BF16 | step (ms) | e2e (s) | peak (GiB) | "
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
