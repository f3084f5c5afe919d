"""What every model family tells dq: its linear layers and their roles, the token grid of the
current forward, which tokens are video, and how to sample with per-step callbacks.

The forward state is tracked by a stateful `diffusers.hooks.ModelHook` on each transformer: the
pipelines wrap every denoiser call in `transformer.cache_context("cond" | "uncond" | ...)`, which
reaches exactly such hooks, so dq learns the CFG branch without patching a pipeline.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from dq_cli.errors import DQError

TRACKER_HOOK = "dq_forward_tracker"

# Module-name suffix → role, shared by every diffusers video DiT (Wan, LTX, CogVideoX).
_ROLE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"attn1\.to_qkv$", "self_attn.qkv"),  # Q/K/V fused (dq_cli/models/fusion.py)
    (r"attn1\.to_q$", "self_attn.q"),
    (r"attn1\.to_k$", "self_attn.k"),
    (r"attn1\.to_v$", "self_attn.v"),
    (r"attn1\.to_out\.0$", "self_attn.out"),
    (r"attn2\.to_q$", "cross_attn.q"),
    (r"attn2\.(to_k|add_k_proj)$", "cross_attn.k"),
    (r"attn2\.(to_v|add_v_proj)$", "cross_attn.v"),
    (r"attn2\.to_out\.0$", "cross_attn.out"),
    (r"ff(n)?\.net\.0\.proj$", "ffn.up"),
    (r"ff(n)?\.net\.2$", "ffn.down"),
    (r"^(proj_out|norm_out\.linear)$", "head"),
    (r"^(proj_in|patch_embed|patch_embedding|condition_embedder|time_embed|time_embedding|caption_projection)\b", "embed"),
)
_BLOCK_INDEX = re.compile(r"(?:blocks|transformer_blocks)\.(\d+)\.")


def role_of(module_name: str) -> str:
    for pattern, role in _ROLE_PATTERNS:
        if re.search(pattern, module_name):
            return role
    return "other"


@dataclass(frozen=True)
class LinearInfo:
    """One nn.Linear of a model. `name` is `<component>.<module path>`, what recipes match."""

    component: str
    module_name: str
    role: str
    in_features: int
    out_features: int

    @property
    def name(self) -> str:
        return f"{self.component}.{self.module_name}"

    @property
    def block(self) -> int | None:
        m = _BLOCK_INDEX.search(self.module_name + ".")
        return int(m.group(1)) if m else None

    @property
    def sees_video(self) -> bool:
        """Cross-attention K/V read text (or image-encoder) tokens only: no video grid there."""
        return self.role not in ("cross_attn.k", "cross_attn.v", "embed")


@dataclass
class ForwardState:
    """Where sampling is, as seen by the layers during one transformer forward."""

    step: int = 0
    num_steps: int = 0
    expert: str = "transformer"
    branches: tuple[str, ...] = ("cond",)
    grid: tuple[int, int, int] = (0, 0, 0)
    text_tokens: int = 0  # tokens before the video tokens in a joint sequence (CogVideoX)
    in_forward: bool = False
    sampling: bool = False  # inside `Adapter.run_pipeline`, whose step callback advances `step`
    # Context parallelism: this process's SequenceShard (dq_cli/quant/sequence.py), else None.
    shard: object | None = None

    @property
    def progress(self) -> float:
        return self.step / max(self.num_steps, 1)

    @property
    def video_tokens(self) -> slice:
        t, h, w = self.grid
        return slice(self.text_tokens, self.text_tokens + t * h * w)


@dataclass
class StepInfo:
    step: int
    num_steps: int
    timestep: float
    expert: str


StepCallback = Callable[[StepInfo], None]


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class ForwardTracker(ModelHook):
    """Records expert, CFG branches and token grid before each transformer forward."""

    _is_stateful = True  # so that `cache_context(...)` hands us the branch name

    def __init__(self, adapter: "Adapter", component: str):
        super().__init__()
        self.adapter, self.component = adapter, component
        self.state_manager = StateManager(_NoState)

    def pre_forward(self, module, *args, **kwargs):
        state = self.adapter.state
        context = self.state_manager._context
        batch = self.adapter.batch_size(args, kwargs)
        state.expert = self.component
        state.branches = self.adapter.branches_of(context.name if context else None, batch)
        state.grid, state.text_tokens = self.adapter.grid_of(module, args, kwargs)
        state.in_forward = True
        if not state.sampling:
            self.adapter.warn_untracked_call()
        cubes = self._resolve_cubes(state.progress)
        self._prepare_cube_orders(cubes, batch, next(module.parameters()).device)
        return args, kwargs

    def post_forward(self, module, output):
        self.adapter.state.in_forward = False
        self._resolve_cubes(None)
        return output

    def _resolve_cubes(self, progress: float | None) -> set[tuple[int, int, int]]:
        """Hand each quantized layer its DeltaQuant cube for this forward (None after it), here
        rather than in the layer: a compiled block then sees the cube, not the step. The layers are
        the ones `attach_state` listed (walking a Wan expert's 1,138 modules took 5–10 ms on the CPU);
        any other QuantLinear reads its cube from the state's step. Returns the DeltaQuant layers' cubes."""
        cubes = set()
        for layer in self.adapter.quant_layers.get(self.component, ()):
            layer.resolve_cube(progress)
            if layer.cube is not None and layer.plan.method == "deltaquant":
                cubes.add(layer.cube)
        return cubes

    def _prepare_cube_orders(self, cubes: set[tuple[int, int, int]], batch: int, device: torch.device) -> None:
        """Make the kernels' cube orders for this forward here, outside the compiled blocks: made
        inside a CUDA-graph recording (`--compile-mode reduce-overhead`) they came from the graph's
        pool and outlived it in their cache, which torch refused ("3 tensor(s) in the cudagraph pool
        not tracked as outputs", 8 Wan A14B blocks on an H200)."""
        grid = self.adapter.state.grid
        if not cubes or not all(grid):
            return
        from dq_kernels.delta_cubes import clip_cube
        from dq_kernels.delta_quantize import cube_order

        for cube in cubes:
            cube_order(tuple(grid), clip_cube(cube, grid), batch, device)

    def reset_state(self, module):
        self.state_manager.reset()
        return module


@dataclass
class SamplingDefaults:
    steps: int
    guidance: float
    frames: int
    height: int
    width: int
    fps: int = 16


class Adapter:
    """Base class of the model families. A subclass sets the class attributes and `grid_of`."""

    family: str = ""
    components: tuple[str, ...] = ("transformer",)
    supports_image: bool = False
    needs_image: bool = False
    defaults: SamplingDefaults = SamplingDefaults(steps=30, guidance=5.0, frames=81, height=480, width=832)
    pipeline_size_multiple: int = 1  # what the diffusers pipeline's own check of height and width asks

    def __init__(self, pipe, source: str):
        self.pipe, self.source = pipe, source
        self.state = ForwardState()
        self.trained = True
        self.runtime = None  # 6Bit-Diffusion's run counters (dq_cli/quant/runtime.py), when installed
        self.attention = None  # AttentionStats once `set_attention` ran
        self.recorded_sampling = None  # a loaded checkpoint's recipe's sampling section (dq_cli.api.load)
        self.compiled = None  # the blocks' torch.compile context, kept by dq_cli.api.load(compile=)
        self._warned_untracked = False
        self.quant_layers: dict[str, list] = {}  # component -> its QuantLinears (dq_cli.quant.apply.attach_state)
        for name, module in self.transformers().items():
            HookRegistry.check_if_exists_or_initialize(module).register_hook(ForwardTracker(self, name), TRACKER_HOOK)

    # ---- what the model is -------------------------------------------------------------------
    def transformers(self) -> dict[str, torch.nn.Module]:
        return {c: getattr(self.pipe, c) for c in self.components if getattr(self.pipe, c, None) is not None}

    def linears(self) -> list[LinearInfo]:
        out = []
        for component, model in self.transformers().items():
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Linear) or getattr(module, "is_quant_linear", False):
                    out.append(LinearInfo(component, name, role_of(name), module.in_features, module.out_features))
        return out

    def fuse_qkv(self) -> int:
        """Fuse every self-attention's Q/K/V into one linear (`quantization.fuse_qkv`); returns how
        many. Raises DQError where diffusers has no fused path for this family's attention."""
        from dq_cli.models.fusion import fuse_qkv

        count = sum(fuse_qkv(model) for model in self.transformers().values())
        if not count and not any(info.role == "self_attn.qkv" for info in self.linears()):
            raise DQError(f"quantization.fuse_qkv: the {self.family} model's self-attention has no fused Q/K/V "
                          "path in diffusers (Wan and dq-tiny have one); set it to false")
        return count

    def module(self, info: LinearInfo) -> torch.nn.Module:
        return self.transformers()[info.component].get_submodule(info.module_name)

    def model_config(self) -> dict[str, dict]:
        return {c: dict(m.config) for c, m in self.transformers().items()}

    def set_attention(self, backend: str):
        """Route the transformers' self-attention through `backend` ('sdpa' or 'sage8'); returns
        the `dq_cli.attention.AttentionStats` that counts the routed calls."""
        from dq_cli.attention import set_attention

        self.attention = set_attention(self.transformers(), backend)
        return self.attention

    # ---- the current forward -----------------------------------------------------------------
    def batch_size(self, args, kwargs) -> int:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        return int(hidden.shape[0])

    def branches_of(self, context: str | None, batch: int) -> tuple[str, ...]:
        if context in ("cond", "uncond"):
            return (context,) * batch
        if context == "cond_uncond" or (context is None and batch == 2 and self.state.num_steps):
            # LTX and CogVideoX batch CFG as torch.cat([negative, positive]).
            half = batch // 2
            return ("uncond",) * half + ("cond",) * (batch - half)
        return ("cond",) * batch

    def grid_of(self, module, args, kwargs) -> tuple[tuple[int, int, int], int]:
        raise NotImplementedError

    # ---- sampling ----------------------------------------------------------------------------
    def prompt_warnings(self, prompt: str) -> list[str]:
        """What the model will not read of `prompt` (dq-tiny's small vocabulary and 16 words)."""
        return []

    def size_multiple(self) -> tuple[int, int, int]:
        """(multiple, VAE factor, patch): height and width must be multiples of the VAE's spatial
        factor times the transformer's patch, and of what the pipeline insists on. The pipelines check
        only the VAE's factor or a fixed number: off the multiple, CogVideoX fails mid-sampling with
        a shape error and TI2V-5B (16 × 2, checked for 16) makes a smaller video than asked."""
        vae = getattr(self.pipe, "vae_scale_factor_spatial", None) or getattr(
            self.pipe, "vae_spatial_compression_ratio", None) or 1
        patch = next(iter(self.transformers().values())).config.patch_size
        patch = patch[-1] if isinstance(patch, (tuple, list)) else patch
        return math.lcm(int(vae) * int(patch), self.pipeline_size_multiple), int(vae), int(patch)

    def check_size(self, height: int, width: int) -> None:
        multiple, vae, patch = self.size_multiple()
        if height % multiple or width % multiple:
            why = [f"VAE factor {vae} × patch {patch}" if vae > 1 else f"patch {patch}"]
            if multiple != vae * patch:
                why.append(f"its pipeline's {self.pipeline_size_multiple}")
            raise DQError(f"height × width {height}×{width}: the {self.family} model takes multiples of {multiple} "
                          f"({' and '.join(why)}), e.g. {_nearest(height, multiple)}×{_nearest(width, multiple)}")

    def expert_at(self, timestep: float) -> str:
        boundary = getattr(self.pipe.config, "boundary_ratio", None)
        if boundary is None or "transformer_2" not in self.transformers():
            return "transformer"
        t_boundary = boundary * self.pipe.scheduler.config.num_train_timesteps
        return "transformer" if timestep >= t_boundary else "transformer_2"

    def generate(self, prompt: str, *, negative_prompt: str = "", image=None, steps: int, guidance: float,
                 seed: int, frames: int, height: int, width: int,
                 on_step: StepCallback | None = None, progress: bool = False) -> torch.Tensor:
        """Sample one video; returns uint8 frames [F, H, W, 3]. `on_step` runs after each step."""
        self.check_size(height, width)
        pipe = self.pipeline_for(image)
        pipe.set_progress_bar_config(disable=not progress)
        call = dict(prompt=prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                    guidance_scale=guidance, num_frames=frames, height=height, width=width,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type="pt")
        if image is not None:
            call["image"] = image
        report = None if on_step is None else (
            lambda i, t: on_step(StepInfo(i, steps, float(t), self.expert_at(float(t)))))
        video = self.run_pipeline(pipe, call, steps, report)[0]  # [F, 3, H, W] in [0, 1]
        # Frames come back on the CPU whatever the device: they go to encoders, numpy and metrics.
        return (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()

    def run_pipeline(self, pipe, call: dict, steps: int,
                     on_step: Callable[[int, torch.Tensor], None] | None = None):
        """One call of `pipe` (its output's `.frames`) with dq's forward state kept: the step index,
        which DeltaQuant's cube schedule and 6Bit's routing read; `on_step(i, t)` after each step."""
        state = self.state
        state.step, state.num_steps, state.sampling = 0, steps, True

        def step_end(pipe, i, t, kwargs):
            if on_step is not None:
                on_step(i, t)
            state.step = i + 1
            return {}

        with torch.inference_mode():
            try:
                return pipe(**self.pipeline_kwargs(dict(call, callback_on_step_end=step_end))).frames
            except ValueError as e:  # the pipeline's check of the settings (sizes, frames, prompt)
                raise DQError(f"{self.family}: {e}") from None
            finally:
                state.sampling = False

    def warn_untracked_call(self) -> None:
        """Once per model: a transformer called outside `run_pipeline` (a user's own `pipe(...)`)
        leaves the sampling step where it was, and what depends on it then does not follow: the
        DeltaQuant cube schedule, 6Bit-Diffusion's per-step routing and TDC."""
        if self._warned_untracked:
            return
        schedules = any(len(layer.plan.cubes or ()) > 1 for layers in self.quant_layers.values() for layer in layers)
        if schedules or self.runtime is not None:
            import warnings

            warnings.warn("dq: the transformer ran outside Adapter.run_pipeline, so the sampling step dq sees "
                          f"stays at {self.state.step}: the DeltaQuant cube schedule and 6Bit-Diffusion's "
                          "routing will not follow the steps. Call model.run_pipeline(model.pipe, kwargs, steps) "
                          "or dq_cli.generate(...) instead of model.pipe(...).", stacklevel=2)
            self._warned_untracked = True

    def pipeline_for(self, image):
        """The pipeline that samples with (or without) a first-frame image."""
        return self.pipe

    def pipeline_kwargs(self, call: dict) -> dict:
        return call

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "Adapter":
        current = next(iter(self.transformers().values())).dtype
        self.pipe.to(device) if dtype in (None, current) else self.pipe.to(device, dtype)
        for model in self.transformers().values():
            _own_aligned_memory(model)
        return self


def _nearest(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def _own_aligned_memory(model: torch.nn.Module) -> None:
    """CPU tensors read from a safetensors file alias its memory map, starting wherever the file's
    header ends. A passthrough checkpoint of dq-tiny (tensors at offset 0 mod 64 after a recipe field
    was added; 24 before) then generated another video than the folder it was made from, equal
    weights and buffers notwithstanding (83 dB instead of identical: `tests/test_bench.py`), and
    identical once both models' tensors had memory of their own (the allocator aligns to 64 bytes)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()


def folder_family(path: Path) -> str | None:
    """Tell the family of a local diffusers folder from its model_index.json."""
    import json

    index = path / "model_index.json"
    if not index.is_file():
        return None
    meta = json.loads(index.read_text())
    cls = meta.get("_class_name", "")
    if cls == "WanImageToVideoPipeline":
        return "wan-i2v"
    if cls == "WanPipeline":
        # TI2V-5B: per-token timesteps (the image, when given, replaces the first latent frame).
        return "wan-ti2v" if meta.get("expand_timesteps") else "wan"
    if cls.startswith("LTX"):
        return "ltx"
    if cls.startswith("CogVideoX"):
        return "cogvideox"
    if cls == "DqTinyPipeline":
        return "dq-tiny"
    return None


@dataclass
class LoadedModel:
    adapter: Adapter
    notes: list[str] = field(default_factory=list)
