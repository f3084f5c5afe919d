"""The models `dq bench e2e` builds with random weights: the real diffusers configurations of
Wan 2.2 T2V-A14B (both experts), Wan 2.2 TI2V-5B, LTX-Video 2B and CogVideoX-5B, written out here
(dq never reaches a hub), or read from a local diffusers folder (its config files only: no weight
is read). The VAE and text encoder are never built: the pipelines take random text embeddings and
return latents; what is timed is the denoising loop, as it runs in the real pipeline.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from dq_cli.errors import DQError

# Where each family's pipeline keeps its VAE compression factors (set when the VAE is left out).
VAE_ATTRS = {
    "wan": ("vae_scale_factor_temporal", "vae_scale_factor_spatial"),
    "wan-ti2v": ("vae_scale_factor_temporal", "vae_scale_factor_spatial"),
    "ltx": ("vae_temporal_compression_ratio", "vae_spatial_compression_ratio"),
    "cogvideox": ("vae_scale_factor_temporal", "vae_scale_factor_spatial"),
}

# The text length each pipeline pads its prompt embeddings to (CogVideoX: the model's own).
TEXT_TOKENS = {"wan": 512, "wan-ti2v": 512, "ltx": 128}


@dataclass(frozen=True)
class BenchModel:
    name: str
    family: str                               # an adapter family (dq_cli.models.ADAPTERS)
    pipeline: str                             # diffusers pipeline class
    transformers: dict[str, dict]             # component -> config (with "_class_name")
    scheduler: dict                           # config with "_class_name"
    pipeline_config: dict = field(default_factory=dict)   # boundary_ratio, expand_timesteps
    vae_factors: tuple[int, int] = (4, 8)     # temporal, spatial compression
    resolutions: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> frames, height, width
    default_resolution: str | None = None
    guidance: float = 5.0
    source: str = "built-in config"

    @property
    def text_tokens(self) -> int:
        if self.family == "cogvideox":
            return int(self.transformers["transformer"]["max_text_seq_length"])
        return TEXT_TOKENS[self.family]

    @property
    def text_dim(self) -> int:
        c = self.transformers["transformer"]
        return int(c.get("text_dim") or c.get("caption_channels") or c.get("text_embed_dim"))

    def with_layers(self, layers: int) -> "BenchModel":
        """The same model with only its first `layers` blocks: a quick check of the full-width path
        (every shape and kernel of the real model) in a fraction of the time and memory."""
        from dataclasses import replace

        have = int(self.transformers["transformer"]["num_layers"])
        if layers >= have:
            return self
        return replace(self, name=f"{self.name}-{layers}L",
                       transformers={c: cfg | {"num_layers": layers} for c, cfg in self.transformers.items()},
                       source=f"{self.source}, first {layers} of {have} blocks")

    def resolution(self, name: str | None) -> tuple[str, tuple[int, int, int]]:
        """(label, (frames, height, width)) of a named resolution or 'FxHxW'."""
        name = name or self.default_resolution
        if name is None:
            raise DQError(f"--resolution: {self.name} has no default resolution; give FRAMESxHEIGHTxWIDTH "
                          "(e.g. 81x480x832)")
        if name in self.resolutions:
            return name, self.resolutions[name]
        m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", name)
        if m:
            return name, tuple(int(v) for v in m.groups())
        known = ", ".join(self.resolutions) or "none"
        raise DQError(f"--resolution {name}: expected one of {known} for {self.name}, or FRAMESxHEIGHTxWIDTH")


_WAN_A14B_EXPERT = {
    "_class_name": "WanTransformer3DModel", "added_kv_proj_dim": None, "attention_head_dim": 128,
    "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "image_dim": None,
    "in_channels": 16, "num_attention_heads": 40, "num_layers": 40, "out_channels": 16,
    "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096,
}
_WAN_SCHEDULER = {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
                  "use_flow_sigmas": True, "num_train_timesteps": 1000, "solver_order": 2}

BUILTIN: dict[str, BenchModel] = {m.name: m for m in (
    BenchModel(
        name="wan2.2-a14b", family="wan", pipeline="WanPipeline",
        transformers={"transformer": _WAN_A14B_EXPERT, "transformer_2": _WAN_A14B_EXPERT},
        scheduler=_WAN_SCHEDULER | {"flow_shift": 3.0},
        pipeline_config={"boundary_ratio": 0.875, "expand_timesteps": False}, vae_factors=(4, 8),
        # 480p: 21 x 30 x 52 = 32,760 tokens; 720p: 21 x 45 x 80 = 75,600.
        resolutions={"480p": (81, 480, 832), "720p": (81, 720, 1280)}, default_resolution="480p", guidance=4.0),
    BenchModel(
        name="wan2.2-ti2v-5b", family="wan-ti2v", pipeline="WanPipeline",
        transformers={"transformer": _WAN_A14B_EXPERT | {
            "attention_head_dim": 128, "num_attention_heads": 24, "ffn_dim": 14336, "num_layers": 30,
            "in_channels": 48, "out_channels": 48}},
        scheduler=_WAN_SCHEDULER | {"flow_shift": 5.0},
        pipeline_config={"boundary_ratio": None, "expand_timesteps": True}, vae_factors=(4, 16),
        # 720p: 31 x 22 x 40 = 27,280 tokens.
        resolutions={"720p": (121, 704, 1280), "480p": (121, 480, 832)}, default_resolution="720p", guidance=5.0),
    BenchModel(
        name="ltx-video", family="ltx", pipeline="LTXPipeline",
        transformers={"transformer": {
            "_class_name": "LTXVideoTransformer3DModel", "activation_fn": "gelu-approximate", "attention_bias": True,
            "attention_head_dim": 64, "attention_out_bias": True, "caption_channels": 4096,
            "cross_attention_dim": 2048, "in_channels": 128, "norm_elementwise_affine": False, "norm_eps": 1e-06,
            "num_attention_heads": 32, "num_layers": 28, "out_channels": 128, "patch_size": 1, "patch_size_t": 1,
            "qk_norm": "rms_norm_across_heads"}},
        scheduler={"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
                   "use_dynamic_shifting": True, "base_shift": 0.95, "max_shift": 2.05,
                   "base_image_seq_len": 1024, "max_image_seq_len": 4096, "shift_terminal": 0.1},
        vae_factors=(8, 32),
        # 16 x 16 x 24 = 6,144 tokens.
        resolutions={"512p": (121, 512, 768)}, default_resolution="512p", guidance=3.0),
    BenchModel(
        name="cogvideox-5b", family="cogvideox", pipeline="CogVideoXPipeline",
        transformers={"transformer": {
            "_class_name": "CogVideoXTransformer3DModel", "activation_fn": "gelu-approximate", "attention_bias": True,
            "attention_head_dim": 64, "dropout": 0.0, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 16,
            "max_text_seq_length": 226, "norm_elementwise_affine": True, "norm_eps": 1e-05,
            "num_attention_heads": 48, "num_layers": 42, "out_channels": 16, "patch_size": 2, "sample_frames": 49,
            "sample_height": 60, "sample_width": 90, "spatial_interpolation_scale": 1.875,
            "temporal_compression_ratio": 4, "temporal_interpolation_scale": 1.0, "text_embed_dim": 4096,
            "time_embed_dim": 512, "timestep_activation_fn": "silu", "use_learned_positional_embeddings": False,
            "use_rotary_positional_embeddings": True}},
        scheduler={"_class_name": "CogVideoXDPMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                   "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
                   "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "set_alpha_to_one": True,
                   "snr_shift_scale": 1.0, "steps_offset": 0, "timestep_spacing": "trailing"},
        vae_factors=(4, 8),
        # 13 x 30 x 45 = 17,550 video tokens + 226 text tokens.
        resolutions={"480p": (49, 480, 720)}, default_resolution="480p", guidance=6.0),
)}


def from_folder(folder: Path) -> BenchModel:
    """A model's configs from a local diffusers folder (the weights there are never read)."""
    from dq_cli.models.base import folder_family

    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise DQError(f"--model {folder}: not a diffusers folder (no model_index.json)")
    meta = json.loads(index.read_text())
    family = folder_family(folder)
    if family not in VAE_ATTRS:
        raise DQError(f"--model {folder}: family {family or meta.get('_class_name')!r} is not one dq bench e2e "
                      f"builds ({', '.join(VAE_ATTRS)})")
    transformers = {}
    for component in ("transformer", "transformer_2"):
        path = folder / component / "config.json"
        if meta.get(component) and meta[component][0] is not None and path.is_file():
            transformers[component] = json.loads(path.read_text())
    if "transformer" not in transformers:
        raise DQError(f"--model {folder}: no transformer/config.json")
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_path.is_file():
        raise DQError(f"--model {folder}: no scheduler/scheduler_config.json")
    pipeline_config = {k: v for k, v in meta.items() if k in ("boundary_ratio", "expand_timesteps")}
    from dq_cli.models import ADAPTERS

    d = ADAPTERS[family].defaults
    return BenchModel(name=folder.name, family=family, pipeline=meta["_class_name"], transformers=transformers,
                      scheduler=json.loads(scheduler_path.read_text()), pipeline_config=pipeline_config,
                      vae_factors=_vae_factors(folder, family), resolutions={"default": (d.frames, d.height, d.width)},
                      default_resolution="default", guidance=d.guidance, source=str(folder))


def _vae_factors(folder: Path, family: str) -> tuple[int, int]:
    """The folder's VAE compression (temporal, spatial), from a VAE built on the meta device."""
    import diffusers
    from accelerate import init_empty_weights

    path = folder / "vae" / "config.json"
    if not path.is_file():
        raise DQError(f"--model {folder}: no vae/config.json (needed for the latent size)")
    config = json.loads(path.read_text())
    with init_empty_weights():
        vae = getattr(diffusers, config["_class_name"]).from_config(config)
    # The formulas of each pipeline's __init__ (pipeline_ltx.py, pipeline_cogvideox.py, pipeline_wan.py).
    if family == "ltx":
        return int(vae.temporal_compression_ratio), int(vae.spatial_compression_ratio)
    if family == "cogvideox":
        return int(vae.config.temporal_compression_ratio), 2 ** (len(vae.config.block_out_channels) - 1)
    return int(vae.config.scale_factor_temporal), int(vae.config.scale_factor_spatial)


def resolve(name: str) -> BenchModel:
    if name in BUILTIN:
        return BUILTIN[name]
    path = Path(name).expanduser()
    if path.is_dir():
        return from_folder(path)
    raise DQError(f"--model {name}: not a built-in bench model ({', '.join(BUILTIN)}, dq-tiny) "
                  "and not a local diffusers folder")
