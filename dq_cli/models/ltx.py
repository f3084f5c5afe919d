"""LTX-Video: patch size 1; the transformer receives tokens already packed, with the latent
(frames, height, width) passed beside them."""

from __future__ import annotations

from dq_cli.errors import DQError
from dq_cli.models.base import Adapter, SamplingDefaults


class LTXAdapter(Adapter):
    family = "ltx"
    defaults = SamplingDefaults(steps=50, guidance=3.0, frames=121, height=512, width=768, fps=24)
    pipeline_size_multiple = 32

    def grid_of(self, module, args, kwargs):
        p, pt = module.config.patch_size, module.config.patch_size_t
        return (kwargs["num_frames"] // pt, kwargs["height"] // p, kwargs["width"] // p), 0

    def pipeline_kwargs(self, call: dict) -> dict:
        # LTX's scheduler stretches the schedule to end at shift_terminal: one step gives 0/0.
        if call["num_inference_steps"] < 2 and self.pipe.scheduler.config.get("shift_terminal"):
            raise DQError("ltx: the LTX-Video scheduler (shift_terminal) needs at least 2 steps")
        return call
