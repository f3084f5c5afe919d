"""CogVideoX: text and video tokens share one sequence (text first) in every block linear."""

from __future__ import annotations

from dq_cli.models.base import Adapter, SamplingDefaults


class CogVideoXAdapter(Adapter):
    family = "cogvideox"
    defaults = SamplingDefaults(steps=50, guidance=6.0, frames=49, height=480, width=720, fps=8)

    def grid_of(self, module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)  # [B, F, C, H, W]
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        p, pt = module.config.patch_size, module.config.patch_size_t or 1
        _, f, _, h, w = hidden.shape
        return (f // pt, h // p, w // p), int(text.shape[1])

    def pipeline_kwargs(self, call: dict) -> dict:
        # The text length is part of the architecture (positional embeddings cover
        # max_text_seq_length + video tokens): 226 for the released models.
        return {**call, "max_sequence_length": self.pipe.transformer.config.max_text_seq_length}
