"""Streaming activation statistics with bounded memory, whatever the number of prompts, and
mergeable: statistics gathered on several processes (each on its own prompts) combine into exactly
what one process gathering every prompt would hold.

- `ChannelAbsMax`: per input channel max |x|, one row per step range (SmoothQuant's statistic;
  step ranges because activation ranges drift across denoising). Merges by max.
- `TokenReservoir`: a uniform sample of input tokens with where each came from: step, CFG branch
  and grid position (t, h, w), or -1 for non-video tokens. The smoothing search and DeltaQuant's
  cube statistics are computed on it. Bottom-k sampling: every token gets a random key and the
  `capacity` smallest keys are kept, which is a uniform sample without replacement. The keys of a
  prompt's tokens come from a generator seeded by (seed, prompt index) (`begin_stream`), so a
  token's key does not depend on which process ran its prompt or in which order: a union of
  reservoirs keeps the k smallest keys of all, the same tokens as one pass over every prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Columns of TokenReservoir.meta.
META_COLUMNS = ("step", "branch", "t", "h", "w")
# A token's ticket = stream << TICKET_BITS | position in the stream: the tie-break between equal keys
# (torch.rand doubles have 53 bits: ties are rare, but then the order must still not depend on ranks).
TICKET_BITS = 40


class ChannelAbsMax:
    def __init__(self, in_features: int, step_ranges: int):
        self.value = torch.zeros(step_ranges, in_features)

    def update(self, x: torch.Tensor, step_range: int) -> None:
        torch.maximum(self.value[step_range], x.detach().abs().amax(dim=0).float().cpu(),
                      out=self.value[step_range])

    def merge(self, other: "ChannelAbsMax") -> None:
        torch.maximum(self.value, other.value, out=self.value)


def stream_seed(seed: int, stream: int) -> int:
    """The generator seed of one stream (prompt) of a reservoir seeded with `seed`: splitmix64 of the
    pair, cut to the 32 bits torch's CPU generator (mt19937) keeps of a seed."""
    z = (((seed & 0xFFFFFFFF) << 32) | (stream & 0xFFFFFFFF)) + 0x9E3779B97F4A7C15
    z &= (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & 0xFFFFFFFF


def smallest(keys: torch.Tensor, tickets: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k smallest (key, ticket) pairs, in that order (lexicographic, exact)."""
    order = torch.sort(tickets, stable=True).indices
    order = order[torch.sort(keys[order], stable=True).indices]
    return order[:k]


# The kept tokens' dtype: what the artifact stores, and a BF16 model's activations exactly. Half of
# fp32's host memory: Wan 2.2 A14B's recipes keep 4,096 tokens for each of 800 layers (4.79 M input
# channels in all), 36.6 GiB in BF16 against 73 in fp32; 27.2 GiB with Q/K/V and the text K/V sharing
# one reservoir each (dq_cli/calibrate.py, `same_input`).
TOKEN_DTYPE = torch.bfloat16


class TokenReservoir:
    """Keeps `capacity` tokens, each seen token kept with equal probability (bottom-k sampling)."""

    def __init__(self, in_features: int, capacity: int, seed: int = 0):
        self.tokens = torch.zeros(capacity, in_features, dtype=TOKEN_DTYPE)
        self.meta = torch.full((capacity, len(META_COLUMNS)), -1, dtype=torch.int32)
        self.keys = torch.full((capacity,), float("inf"), dtype=torch.float64)
        self.tickets = torch.full((capacity,), -1, dtype=torch.int64)
        self.capacity, self.seed, self.seen, self.filled = capacity, seed, 0, 0
        self.begin_stream(0)

    def begin_stream(self, stream: int) -> None:
        """Tokens from here on belong to `stream` (calibration: the prompt's index in the prompt list)."""
        if not 0 <= stream < 1 << (63 - TICKET_BITS):
            raise ValueError(f"stream {stream} out of range")
        self.stream, self.position = stream, 0
        self.generator = torch.Generator().manual_seed(stream_seed(self.seed, stream))

    def update(self, x: torch.Tensor, meta: torch.Tensor) -> None:
        n = x.shape[0]
        keys = torch.rand(n, generator=self.generator, dtype=torch.float64)
        tickets = (self.stream << TICKET_BITS) + self.position + torch.arange(n, dtype=torch.int64)
        self.seen, self.position = self.seen + n, self.position + n
        if self.capacity == 0:
            return
        if self.filled == self.capacity:  # only keys under the largest kept one can enter
            candidates = keys <= self.keys.max()
            if not candidates.any():
                return
            # chosen where the tokens are: only the candidates are converted and copied to the host
            keys, tickets = keys[candidates], tickets[candidates]
            x, meta = x[candidates.to(x.device)], meta[candidates.to(meta.device)]
        self._admit(keys, tickets, x.detach().to(TOKEN_DTYPE).cpu(), meta.to(torch.int32).cpu())

    def _admit(self, keys, tickets, tokens, meta) -> None:
        """Keep the `capacity` smallest of the kept and the new keys; new tokens that enter take the
        slots of the evicted ones (the stored tokens are never copied as a whole)."""
        f = self.filled
        keep = smallest(torch.cat([self.keys[:f], keys]), torch.cat([self.tickets[:f], tickets]), self.capacity)
        entering = keep[keep >= f] - f
        stays = torch.zeros(f, dtype=torch.bool)
        stays[keep[keep < f]] = True
        slots = torch.cat([torch.nonzero(~stays).flatten(), torch.arange(f, self.capacity)])[: entering.numel()]
        self.keys[slots], self.tickets[slots] = keys[entering], tickets[entering]
        self.tokens[slots], self.meta[slots] = tokens[entering], meta[entering]
        self.filled = keep.numel()

    def order(self) -> torch.Tensor:
        """Slots of the kept tokens in (key, ticket) order: the canonical order of the sample."""
        return smallest(self.keys[: self.filled], self.tickets[: self.filled], self.filled)

    def sort_(self) -> None:
        """Put the kept tokens in key order in their own slots, one reservoir's rows copied at a time,
        so that `sample` can hand out views: an artifact is then saved holding the reservoirs once,
        where a sorted copy of each doubled the host memory (73 GiB for the Wan recipes)."""
        f, order = self.filled, self.order()
        if torch.equal(order, torch.arange(f)):
            return
        for t in (self.tokens, self.meta, self.keys, self.tickets):
            t[:f] = t[order]

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [n, K], meta [n, 5]) in key order, whichever order they were seen or merged in:
        views of the reservoir's own storage (after `sort_`), valid until its next update."""
        self.sort_()
        return self.tokens[: self.filled], self.meta[: self.filled]


@dataclass
class LayerStats:
    absmax: ChannelAbsMax
    reservoir: TokenReservoir

    @classmethod
    def new(cls, in_features: int, step_ranges: int, capacity: int, seed: int) -> "LayerStats":
        return cls(ChannelAbsMax(in_features, step_ranges), TokenReservoir(in_features, capacity, seed))

    def to_tensors(self, name: str) -> dict[str, torch.Tensor]:
        tokens, meta = self.reservoir.sample()
        return {f"{name}.absmax": self.absmax.value, f"{name}.tokens": tokens,
                f"{name}.token_meta": meta}
