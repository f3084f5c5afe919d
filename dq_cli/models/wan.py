"""Wan 2.2: T2V-A14B and I2V-A14B (two experts switched at `boundary_ratio`) and TI2V-5B."""

from __future__ import annotations

from dq_cli.models.base import Adapter, SamplingDefaults


class WanAdapter(Adapter):
    family = "wan"
    components = ("transformer", "transformer_2")
    defaults = SamplingDefaults(steps=40, guidance=4.0, frames=81, height=480, width=832, fps=16)
    pipeline_size_multiple = 16

    def grid_of(self, module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)  # [B, C, F, H, W]
        pt, ph, pw = module.config.patch_size
        _, _, f, h, w = hidden.shape
        return (f // pt, h // ph, w // pw), 0


class WanI2VAdapter(WanAdapter):
    """I2V-A14B: `WanImageToVideoPipeline`; the first frame is required."""

    family = "wan-i2v"
    supports_image = True
    needs_image = True


class WanTI2VAdapter(WanAdapter):
    """TI2V-5B: one transformer; an image, when given, conditions the first frame.

    The folder holds a `WanPipeline`, which has no `image` argument: with an image, dq samples with
    a `WanImageToVideoPipeline` built from the same components (no CLIP encoder; per-token
    timesteps, `expand_timesteps=True`), as diffusers documents for TI2V-5B."""

    family = "wan-ti2v"
    supports_image = True
    defaults = SamplingDefaults(steps=50, guidance=5.0, frames=121, height=704, width=1280, fps=24)
    _i2v = None

    def pipeline_for(self, image):
        if image is None:
            return self.pipe
        if self._i2v is None:
            from diffusers import WanImageToVideoPipeline

            p = self.pipe
            self._i2v = WanImageToVideoPipeline(
                tokenizer=p.tokenizer, text_encoder=p.text_encoder, vae=p.vae, scheduler=p.scheduler,
                image_processor=None, image_encoder=None, transformer=p.transformer, transformer_2=None,
                boundary_ratio=None, expand_timesteps=True)
        return self._i2v
