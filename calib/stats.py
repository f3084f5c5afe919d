"""Streaming activation statistics with bounded memory, whatever the number of prompts.

- `ChannelAbsMax`: per input channel max |x|, one row per step range (SmoothQuant's statistic;
  step ranges because activation ranges drift across denoising).
- `TokenReservoir`: a uniform sample of input tokens (Algorithm R, vectorised) with where each
  came from: step, CFG branch and grid position (t, h, w), or -1 for non-video tokens. The
  smoothing search and DeltaQuant's cube statistics are computed on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Columns of TokenReservoir.meta.
META_COLUMNS = ("step", "branch", "t", "h", "w")


class ChannelAbsMax:
    def __init__(self, in_features: int, step_ranges: int):
        self.value = torch.zeros(step_ranges, in_features)

    def update(self, x: torch.Tensor, step_range: int) -> None:
        torch.maximum(self.value[step_range], x.detach().abs().amax(dim=0).float().cpu(),
                      out=self.value[step_range])

    def merge(self, other: "ChannelAbsMax") -> None:
        torch.maximum(self.value, other.value, out=self.value)


class TokenReservoir:
    """Keeps `capacity` tokens, each seen token kept with equal probability."""

    def __init__(self, in_features: int, capacity: int, seed: int = 0):
        self.tokens = torch.zeros(capacity, in_features)
        self.meta = torch.full((capacity, len(META_COLUMNS)), -1, dtype=torch.int32)
        self.capacity, self.seen = capacity, 0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def filled(self) -> int:
        return min(self.seen, self.capacity)

    def update(self, x: torch.Tensor, meta: torch.Tensor) -> None:
        x, meta = x.detach().float().cpu(), meta.to(torch.int32).cpu()
        n = x.shape[0]
        free = max(0, min(self.capacity - self.seen, n))
        if free:
            self.tokens[self.seen : self.seen + free] = x[:free]
            self.meta[self.seen : self.seen + free] = meta[:free]
        if free < n:
            # Token number i (1-based, over the whole stream) replaces a random slot with
            # probability capacity / i: draw j uniform in [0, i) and keep it if j < capacity.
            index = torch.arange(self.seen + free + 1, self.seen + n + 1, dtype=torch.float64)
            draw = (torch.rand(n - free, generator=self.generator, dtype=torch.float64) * index).long()
            keep = draw < self.capacity
            slots, rows = _last_per_slot(draw[keep], torch.arange(free, n)[keep])
            self.tokens[slots] = x[rows]
            self.meta[slots] = meta[rows]
        self.seen += n

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[: self.filled], self.meta[: self.filled]


def _last_per_slot(slots: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where several tokens drew one slot, keep the last, as a sequential pass would (indexed
    assignment with repeated indices leaves the winner unspecified)."""
    if slots.numel() == 0:
        return slots, rows
    unique, inverse = torch.unique(slots, return_inverse=True)
    last = torch.full((unique.numel(),), -1, dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(slots.numel()), reduce="amax")
    return unique, rows[last]


@dataclass
class LayerStats:
    absmax: ChannelAbsMax
    reservoir: TokenReservoir

    @classmethod
    def new(cls, in_features: int, step_ranges: int, capacity: int, seed: int) -> "LayerStats":
        return cls(ChannelAbsMax(in_features, step_ranges), TokenReservoir(in_features, capacity, seed))

    def to_tensors(self, name: str) -> dict[str, torch.Tensor]:
        tokens, meta = self.reservoir.sample()
        return {f"{name}.absmax": self.absmax.value, f"{name}.tokens": tokens.to(torch.bfloat16),
                f"{name}.token_meta": meta}
