"""The built-in model `dq-tiny`: a diffusers `WanTransformer3DModel` in pixel space, our word-level
text encoder, and a flow-matching sampler (diffusers' UniPC in flow mode, as Wan uses).

Pixel space keeps the model a single network that runs in seconds on a CPU: the transformer sees
16 frames × 32 × 32 RGB, patchified (1, 2, 2) into a 16 × 16 × 16 token grid — enough spatial and
temporal structure for DeltaQuant's cubes. Videos are upscaled for display only.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from diffusers import UniPCMultistepScheduler, WanTransformer3DModel

from dq_cli.tiny.text import TinyTextEncoder, WordTokenizer

TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=3, out_channels=3,
    text_dim=64, freq_dim=64, ffn_dim=512, num_layers=6, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64,
)
TEXT_CONFIG = dict(max_length=16, dim=64, layers=2, heads=4)
FLOW_SHIFT = 2.0


def weights_dir() -> Path:
    return Path(str(resources.files("dq_cli.tiny"))) / "weights"


def make_scheduler() -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   flow_shift=FLOW_SHIFT, num_train_timesteps=1000)


def default_tokenizer() -> WordTokenizer:
    from dq_cli.tiny.world import vocabulary

    return WordTokenizer(vocabulary(), TEXT_CONFIG["max_length"])


def cast_keeping_fp32(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast to `dtype` as diffusers' `from_pretrained(torch_dtype=...)` loads: in a 16-bit model the
    modules the class keeps in fp32 (Wan's time embedder, norms, modulation tables) stay fp32. A
    plain `.to(dtype)` casts them too, and a checkpoint, rebuilt the diffusers way, then no longer
    computes what the model it came from computes."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ()) if dtype in (torch.float16, torch.bfloat16) else set()

    def target(name: str) -> torch.dtype:  # on the tensor's full name, as diffusers: `scale_shift_table` is a parameter
        return torch.float32 if keep & set(name.split(".")) else dtype

    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for key, p in module.named_parameters(recurse=False):
            p.data = p.data.to(target(prefix + key))
        for key, b in module.named_buffers(recurse=False):
            if b.is_floating_point():
                module._buffers[key] = b.to(target(prefix + key))


@dataclass
class _Output:
    frames: torch.Tensor  # [B, F, 3, H, W] in [0, 1]


@dataclass
class _Config:
    boundary_ratio: None = None


class DqTinyPipeline:
    """Text → video for dq-tiny, with the same call signature as diffusers' video pipelines."""

    def __init__(self, transformer: WanTransformer3DModel, text_encoder: TinyTextEncoder,
                 tokenizer: WordTokenizer, scheduler: UniPCMultistepScheduler):
        self.transformer, self.text_encoder = transformer, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.config = _Config()
        self._progress = False

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def random(cls, seed: int = 0) -> "DqTinyPipeline":
        tokenizer = default_tokenizer()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            transformer = WanTransformer3DModel(**TRANSFORMER_CONFIG)
            text_encoder = TinyTextEncoder(vocab_size=len(tokenizer.vocab), **TEXT_CONFIG)
        return cls(transformer.eval(), text_encoder.eval(), tokenizer, make_scheduler())

    @classmethod
    def from_pretrained(cls, folder: Path) -> "DqTinyPipeline":
        transformer = WanTransformer3DModel.from_pretrained(folder / "transformer")
        text_encoder = TinyTextEncoder.from_pretrained(folder / "text_encoder")
        tokenizer = WordTokenizer.load(folder / "vocab.json")
        return cls(transformer.eval(), text_encoder.eval(), tokenizer, make_scheduler())

    def save_pretrained(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(folder / "transformer")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        self.tokenizer.save(folder / "vocab.json")

    def to(self, device=None, dtype=None) -> "DqTinyPipeline":
        if dtype is not None:
            cast_keeping_fp32(self.transformer, dtype)
            cast_keeping_fp32(self.text_encoder, dtype)
        if device is not None:
            self.transformer.to(device)
            self.text_encoder.to(device)
        return self

    def set_progress_bar_config(self, disable: bool = True) -> None:
        self._progress = not disable

    # ---- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        ids, mask = self.tokenizer(prompts)
        device = self.transformer.device
        return self.text_encoder(ids.to(device), mask.to(device)).to(self.transformer.dtype)

    @torch.no_grad()
    def __call__(self, prompt: str, negative_prompt: str | None = None, num_inference_steps: int = 20,
                 guidance_scale: float = 4.0, num_frames: int = 16, height: int = 32, width: int = 32,
                 generator: torch.Generator | None = None, output_type: str = "pt",
                 callback_on_step_end=None, **unused) -> _Output:
        device, dtype = self.transformer.device, self.transformer.dtype
        cond = self.encode([prompt])
        uncond = self.encode([negative_prompt or ""])
        shape = (1, 3, num_frames, height, width)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for i, t in enumerate(self.scheduler.timesteps):
            timestep = t.expand(1).to(device)
            x = latents.to(dtype)
            with self.transformer.cache_context("cond"):
                v = self.transformer(x, timestep, cond, return_dict=False)[0].float()
            if guidance_scale > 1.0:
                with self.transformer.cache_context("uncond"):
                    v_uncond = self.transformer(x, timestep, uncond, return_dict=False)[0].float()
                v = v_uncond + guidance_scale * (v - v_uncond)
            latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, t, {})
        video = ((latents.clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4)  # [B, F, 3, H, W]
        return _Output(frames=video)
