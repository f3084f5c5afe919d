"""Combining calibration statistics gathered by several processes (data-parallel calibration under
`torchrun`), with `torch.distributed` collectives on the CPU tensors the statistics live in (gloo;
under NCCL the process group must carry a CPU backend too: "cpu:gloo,cuda:nccl").

Each process ran its own prompts. What they hold combines so that the result does not depend on the
number of processes:
- absmax: max (exact);
- token reservoirs: bottom-k union (`TokenReservoir` keys depend only on (seed, prompt, position)):
  the kept tokens and their order are those of one process running every prompt;
- trajectories: rows indexed by prompt, each filled by the one process that ran that prompt.
Every process must call these functions in the same order with the same layers (they are
collectives); only `dst` receives the combined reservoirs and trajectories.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from dq_calib.stats import LayerStats, TokenReservoir, smallest
from dq_calib.trajectories import Trajectories


def reduce_layer_stats(stats: list[LayerStats], group=None, dst: int = 0) -> None:
    """Combine every process's statistics of these layers into `dst`'s (in place)."""
    for s in stats:
        dist.all_reduce(s.absmax.value, op=dist.ReduceOp.MAX, group=group)
        reduce_reservoir(s.reservoir, group, dst)


def reduce_reservoir(r: TokenReservoir, group=None, dst: int = 0) -> None:
    """Bottom-k union over processes. The keys travel to every process (small: `capacity` doubles
    each), every process works out the same winners, and only the winners' tokens travel, summed
    into `dst` (each row is non-zero on exactly one process, so the sum is exact)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    cap = r.capacity
    keys = torch.full((cap,), float("inf"), dtype=torch.float64)
    tickets = torch.full((cap,), -1, dtype=torch.int64)
    keys[: r.filled], tickets[: r.filled] = r.keys[: r.filled], r.tickets[: r.filled]
    counts = torch.tensor([r.filled, r.seen], dtype=torch.int64)
    all_keys = [torch.empty_like(keys) for _ in range(world)]
    all_tickets = [torch.empty_like(tickets) for _ in range(world)]
    all_counts = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(all_keys, keys, group=group)
    dist.all_gather(all_tickets, tickets, group=group)
    dist.all_gather(all_counts, counts, group=group)
    filled = [int(c[0]) for c in all_counts]
    owner = torch.cat([torch.full((f,), p, dtype=torch.int64) for p, f in enumerate(filled)])
    slot = torch.cat([torch.arange(f) for f in filled])
    cand_keys = torch.cat([k[:f] for k, f in zip(all_keys, filled)])
    cand_tickets = torch.cat([t[:f] for t, f in zip(all_tickets, filled)])
    win = smallest(cand_keys, cand_tickets, cap)
    m = win.numel()
    mine = owner[win] == rank
    tokens = torch.zeros(m, r.tokens.shape[1])  # summed in fp32 (a BF16 value plus zeros: exact)
    meta = torch.zeros(m, r.meta.shape[1], dtype=torch.int32)
    tokens[mine], meta[mine] = r.tokens[slot[win][mine]].float(), r.meta[slot[win][mine]]
    dist.reduce(tokens, dst, op=dist.ReduceOp.SUM, group=group)
    dist.reduce(meta, dst, op=dist.ReduceOp.SUM, group=group)
    if rank == dst:
        r.tokens[:m], r.meta[:m] = tokens, meta
        r.keys[:m], r.tickets[:m] = cand_keys[win], cand_tickets[win]
        r.filled, r.seen = m, int(sum(int(c[1]) for c in all_counts))


def reduce_trajectories(traj: Trajectories, owned: list[int], group=None, dst: int = 0) -> None:
    """Every prompt's rows come from the process that ran it (`owned`: this process's prompts)."""
    mask = torch.zeros(traj.prompts, dtype=torch.bool)
    mask[owned] = True
    for name in ("gamma", "delta_rel_l1", "delta_cos", "erel"):
        t = getattr(traj, name).clone()
        t[~mask] = 0.0  # x + 0 = x and NaN + 0 = NaN: the owner's rows come through unchanged
        dist.reduce(t, dst, op=dist.ReduceOp.SUM, group=group)
        if dist.get_rank(group) == dst:
            setattr(traj, name, t)
