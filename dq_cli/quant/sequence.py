"""Quantized layers under sequence sharding (context parallelism): each process holds an equal,
contiguous slice of the token sequence (diffusers' `EquipartitionSharder`: rank r holds tokens
[r·n, (r+1)·n) of T-major video tokens) and the result must match one process holding them all.

Most activation scales are token-local already (INT8 / FP8 per token, INT4 per group of a token,
NVFP4's per-16 block scales): a shard rounds its tokens exactly as the whole sequence would. What is
not token-local, and what is done about it here:

- NVFP4's FP32 per-tensor scale (max |x| over the tensor): the max is all-reduced over the group;
- DeltaQuant's cubes: a cube spans `ct` frames, so a shard boundary that falls inside a slab of `ct`
  frames cuts every cube of that slab in two. Each process sums its tokens per cube; the sums of the
  cubes that straddle a boundary (only those, the same list on every process, from the geometry) are
  all-reduced, so every cube mean is over the whole cube;
- 6Bit-Diffusion's whole-tensor statistics (Γ, TDC's change of Δ, the refresh outlier ratio): their
  sums and maxima are all-reduced, so every process takes the same decision (a process that skipped a
  block while another ran it would deadlock the attention's collectives).

Sums over a straddling cube are added in another order than one process adds them (ulp-level
differences in those cube means); everything else is bit-for-bit the single-process arithmetic.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from dq_calib.trajectories import EPS
from dq_calib.trajectories import outlier_ratio as single_outlier_ratio
from dq_kernels.delta_cubes import cube_ids
from dq_kernels.nvfp4 import absmax


@dataclass(frozen=True)
class SequenceShard:
    """This process's place in the sequence-parallel group."""

    group: Any  # torch.distributed ProcessGroup
    rank: int
    size: int

    def all_max(self, t: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(t, "MAX")

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(t, "SUM")

    def _all_reduce(self, t: torch.Tensor, op: str) -> torch.Tensor:
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op), group=self.group)
        return t

    def holds_slice_of(self, local_tokens: int, total_tokens: int) -> bool:
        """Whether a sequence of `local_tokens` here is this process's slice of `total_tokens`."""
        return self.size > 1 and local_tokens * self.size == total_tokens


@functools.lru_cache(maxsize=64)
def _layout(grid: tuple[int, int, int], cube: tuple[int, int, int], size: int, rank: int,
            device: torch.device = torch.device("cpu")):
    """Which cubes this rank's tokens fall in (compact numbering), their token counts over the whole
    grid, and the cubes that straddle a shard boundary (global ids, the same list on every rank)
    with where each sits in this rank's compact numbering (or is absent). Cached on `device`: every
    DeltaQuant layer of a step asks for the same layout."""
    ids, n = cube_ids(grid, cube)
    per = ids.numel() // size
    owner = torch.arange(ids.numel()) // per
    lo = torch.full((n,), size, dtype=torch.long).scatter_reduce(0, ids, owner, "amin")
    hi = torch.full((n,), -1, dtype=torch.long).scatter_reduce(0, ids, owner, "amax")
    shared = torch.nonzero(lo != hi).flatten()
    local = ids[rank * per: (rank + 1) * per]
    touched, compact = torch.unique(local, sorted=True, return_inverse=True)
    counts = torch.bincount(ids, minlength=n)[touched].to(torch.float32)
    at = torch.searchsorted(touched, shared).clamp(max=touched.numel() - 1)
    here = touched[at] == shared
    return compact.to(device), counts.to(device), touched.numel(), at[here].to(device), here.to(device)


def split_deltas_sharded(x: torch.Tensor, grid: tuple[int, int, int], cube: tuple[int, int, int],
                         shard: SequenceShard) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`dq_kernels.delta_cubes.split_deltas` for this process's slice x [B, n, K] of the grid's tokens:
    (core tokens of the cubes it touches [B, m, K], deltas [B, n, K], index of each token's cube in
    the core tokens [n]). Cube means are over whole cubes, whatever the boundaries cut."""
    compact, counts, m, at, here = _layout(tuple(grid), tuple(cube), shard.size, shard.rank, x.device)
    b, _, k = x.shape
    sums = torch.zeros(b, m, k, dtype=torch.float32, device=x.device)
    sums.index_add_(1, compact, x.float())
    part = torch.zeros(b, here.numel(), k, dtype=torch.float32, device=x.device)
    part[:, here] = sums[:, at]
    part = shard.all_sum(part)
    sums[:, at] = part[:, here]
    core = sums / counts[None, :, None]
    return core, x.float() - core[:, compact], compact


def outlier_ratio(x: torch.Tensor, shard: SequenceShard | None) -> float:
    """max|X| / mean|X| over the whole sequence (`dq_calib.trajectories.outlier_ratio`)."""
    if shard is None:
        return single_outlier_ratio(x)
    a = x.detach().float().abs()
    top = shard.all_max(a.max())
    mean = shard.all_sum(a.sum()) / (a.numel() * shard.size)  # the slices are equal (SequenceCheck)
    return float(top / mean.clamp_min(EPS))


def sequence_amax(x: torch.Tensor, shard: SequenceShard | None) -> torch.Tensor | None:
    """max|X| over the whole sequence when this process holds a slice of it (NVFP4's per-tensor
    scale, the one scale that is not token-local); None when it holds all of it."""
    return None if shard is None else shard.all_max(absmax(x.detach()).float())


def row_ratio(num: torch.Tensor, den: torch.Tensor, shard: SequenceShard | None) -> torch.Tensor:
    """num / den per batch row, both summed over the whole sequence first (`gamma`, `rel_l1_change`)."""
    if shard is not None:
        both = shard.all_sum(torch.stack([num.float(), den.float()]))
        num, den = both[0], both[1]
    return num / den.clamp_min(EPS)
