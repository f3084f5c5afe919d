"""`dq calibrate`: run the pipeline over calibration prompts with hooks on the layers to quantize,
and save what the methods need (per-channel absmax by step range, a token reservoir with grid
positions), plus a JSON summary that records the recipe and versions."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from dq_calib.stats import LayerStats
from dq_cli import __version__
from dq_cli.models.base import Adapter, LinearInfo, StepInfo

BRANCH_CODES = {"cond": 0, "uncond": 1}


@dataclass
class CalibrationResult:
    stats: dict[str, LayerStats]
    steps_seen: dict[str, list[int]] = field(default_factory=dict)      # expert -> steps it ran
    branches_seen: set[str] = field(default_factory=set)
    forwards: int = 0


def token_meta(adapter: Adapter, batch: int, seq: int) -> torch.Tensor:
    """[batch*seq, 5] (step, branch, t, h, w) for the tokens of the current forward."""
    state = adapter.state
    meta = torch.full((batch, seq, 5), -1, dtype=torch.int32)
    meta[..., 0] = state.step
    for b, branch in enumerate(state.branches[:batch]):
        meta[b, :, 1] = BRANCH_CODES.get(branch, -1)
    t, h, w = state.grid
    # A joint sequence (CogVideoX) has its text first; a layer after the split (the head) sees video only.
    start = 0 if seq == t * h * w else state.video_tokens.start
    n = min(t * h * w, seq - start)
    if n > 0:
        idx = torch.arange(n)
        meta[:, start : start + n, 2] = (idx // (h * w)).int()
        meta[:, start : start + n, 3] = ((idx // w) % h).int()
        meta[:, start : start + n, 4] = (idx % w).int()
    return meta.reshape(batch * seq, 5)


def calibrate(adapter: Adapter, layers: list[LinearInfo], prompts: list[str], *, steps: int, guidance: float,
              frames: int, height: int, width: int, seed: int, step_ranges: int, tokens_per_layer: int,
              negative_prompt: str = "", image=None,
              on_step: Callable[[StepInfo], None] | None = None) -> CalibrationResult:
    result = CalibrationResult({info.name: LayerStats.new(info.in_features, step_ranges, tokens_per_layer,
                                                          seed + i) for i, info in enumerate(layers)})

    def observe(info: LinearInfo):
        stats = result.stats[info.name]

        def hook(module, args):
            x = args[0]
            batch, seq = (x.shape[0], x.shape[1]) if x.dim() == 3 else (1, x.shape[0])
            x2 = x.reshape(-1, info.in_features)
            step_range = min(adapter.state.step * step_ranges // max(adapter.state.num_steps, 1), step_ranges - 1)
            stats.absmax.update(x2, step_range)
            meta = token_meta(adapter, batch, seq) if info.sees_video else _text_meta(adapter, batch, seq)
            stats.reservoir.update(x2, meta)

        return hook

    def count(module, args, kwargs, output):
        # After the forward: torch's own pre-hooks run before the tracker has set the state.
        state = adapter.state
        result.forwards += 1
        result.branches_seen.update(state.branches)
        result.steps_seen.setdefault(state.expert, []).append(state.step)

    handles = [adapter.module(info).register_forward_pre_hook(observe(info)) for info in layers]
    handles += [m.register_forward_hook(count, with_kwargs=True) for m in adapter.transformers().values()]
    try:
        for i, prompt in enumerate(prompts):
            adapter.generate(prompt, negative_prompt=negative_prompt, image=image, steps=steps, guidance=guidance,
                             seed=seed + i, frames=frames, height=height, width=width, on_step=on_step)
    finally:
        for h in handles:
            h.remove()
    return result


def _text_meta(adapter: Adapter, batch: int, seq: int) -> torch.Tensor:
    meta = torch.full((batch, seq, 5), -1, dtype=torch.int32)
    meta[..., 0] = adapter.state.step
    for b, branch in enumerate(adapter.state.branches[:batch]):
        meta[b, :, 1] = BRANCH_CODES.get(branch, -1)
    return meta.reshape(batch * seq, 5)


def save_artifact(out: Path, result: CalibrationResult, layers: list[LinearInfo], recipe_text: str,
                  summary: dict) -> tuple[Path, Path]:
    """`<out>.safetensors` (tensors) and `<out>.json` (summary); each written atomically, JSON last
    so that a summary never points at missing tensors."""
    tensors_path, json_path = out.with_suffix(".safetensors"), out.with_suffix(".json")
    tensors = {}
    for info in layers:
        tensors.update(result.stats[info.name].to_tensors(info.name))
    meta = {"format": "dq-calibration", "format_version": "1", "recipe": recipe_text, "dq_version": __version__}
    _atomic(tensors_path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta))
    doc = {**meta, **summary, "tensors": tensors_path.name,
           "layers": {i.name: {"role": i.role, "in_features": i.in_features, "out_features": i.out_features,
                               "tokens": result.stats[i.name].reservoir.filled,
                               "tokens_seen": result.stats[i.name].reservoir.seen} for i in layers}}
    _atomic(json_path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    return tensors_path, json_path


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
