"""The built-in `dq-tiny` (see dq_cli/tiny)."""

from __future__ import annotations

import json

import torch

from diffusers import WanTransformer3DModel

from dq_cli.models.base import Adapter, SamplingDefaults
from dq_cli.tiny.pipeline import TRANSFORMER_CONFIG, DqTinyPipeline, weights_dir


class DqTinyAdapter(Adapter):
    family = "dq-tiny"
    defaults = SamplingDefaults(steps=20, guidance=4.0, frames=16, height=32, width=32, fps=8)

    def grid_of(self, module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        pt, ph, pw = module.config.patch_size
        _, _, f, h, w = hidden.shape
        return (f // pt, h // ph, w // pw), 0

    def prompt_warnings(self, prompt: str) -> list[str]:
        tokenizer, warnings = self.pipe.tokenizer, []
        if unknown := tokenizer.unknown_words(prompt):
            warnings.append(f"words the model does not know (ignored): {', '.join(unknown)}")
        if dropped := tokenizer.words_past_limit(prompt):
            warnings.append(f"the model reads the first {tokenizer.max_length} words of a prompt; ignored: "
                            f"{' '.join(dropped)}")
        return warnings

    @classmethod
    def load(cls, path=None, components: dict | None = None, dtype: torch.dtype | None = None) -> "DqTinyAdapter":
        """`dtype` casts the text encoder and the transformer (diffusers' way: its fp32 modules stay fp32)
        before `components` (a checkpoint's transformer, already in its dtypes) replace it, so that a
        checkpoint runs beside the same text encoder as the model it came from."""
        folder = path or weights_dir()
        trained = (folder / "transformer" / "config.json").is_file()
        pipe = DqTinyPipeline.from_pretrained(folder) if trained else DqTinyPipeline.random(seed=0)
        pipe.to(dtype=dtype)
        if components:
            pipe.transformer = components["transformer"]
        adapter = cls(pipe, str(folder) if trained else "dq-tiny (untrained: seeded random weights)")
        adapter.trained = trained
        return adapter

    @staticmethod
    def reference_configs() -> dict[str, dict]:
        config = weights_dir() / "transformer" / "config.json"
        if config.is_file():
            return {"transformer": json.loads(config.read_text())}
        return {"transformer": dict(WanTransformer3DModel(**TRANSFORMER_CONFIG).config)}
