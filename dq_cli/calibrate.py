"""`dq calibrate`: run the pipeline over calibration prompts with hooks on the layers to quantize,
and save what the methods need (per-channel absmax by step range, a token reservoir with grid
positions), plus a JSON summary that records the recipe and versions. Layers that read the tensor
the layer before them read (an attention's Q/K/V, the text K/V) keep one set of statistics: the
first's, found at their first call and checked at every later one."""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook
from safetensors.torch import save_file

from dq_calib.artifact import FORMAT_VERSION, artifact_paths
from dq_calib.stats import LayerStats
from dq_calib.trajectories import Trajectories, cosine, gamma, rel_error, rel_l1_change
from dq_cli import __version__
from dq_cli.atomic import write_atomic
from dq_cli.errors import DQError
from dq_cli.models.base import Adapter, LinearInfo, StepInfo
from dq_cli.quant.linear import QuantLinear
from dq_cli.quant.plan import CALIBRATED_METHODS, LayerPlan
from dq_cli.quant.runtime import block_inputs, block_metadata, block_outputs, transformer_blocks

BRANCH_CODES = {"cond": 0, "uncond": 1}


@dataclass
class CalibrationResult:
    stats: dict[str, LayerStats]
    steps_seen: dict[str, list[int]] = field(default_factory=dict)      # expert -> steps it ran
    branches_seen: set[str] = field(default_factory=set)
    forwards: int = 0
    trajectories: Trajectories | None = None  # 6Bit-Diffusion's Γ, E_rel and Δ (when the recipe asks)
    # Layers fed the very tensor the layer before them was (Q/K/V of one attention, the text K/V):
    # follower -> leader, whose statistics they share (`stats[follower] is stats[leader]`).
    same_input: dict[str, str] = field(default_factory=dict)

    def leaders(self, layers: list[LinearInfo]) -> list[LinearInfo]:
        """The layers whose statistics are their own, in order."""
        return [info for info in layers if info.name not in self.same_input]

    def share(self, follower: str, leader: str) -> None:
        self.same_input[follower] = leader
        self.stats[follower] = self.stats[leader]


class SharedInputs:
    """Finds the layers fed the very tensor that the layer observed before them was (an attention's
    Q/K/V, the text K/V), which then share that layer's statistics: decided at a layer's first call,
    then held to in every forward. The latest input is held by a weak reference: compared by identity
    while it lives, so a freed tensor whose memory now holds the next input cannot match, and
    nothing is kept alive."""

    def __init__(self, result: CalibrationResult):
        self.result, self.decided = result, set()
        self.forward_done()

    def forward_done(self) -> None:
        self.latest, self.latest_leader = (lambda: None), None  # nothing is shared across forwards

    def follows(self, name: str, x: torch.Tensor) -> bool:
        """Whether this call's input is the latest one, which its leader has recorded already."""
        prev = self.latest()
        if name not in self.decided:
            self.decided.add(name)
            if x is prev and self.latest_leader is not None:
                self.result.share(name, self.latest_leader)
        leader = self.result.same_input.get(name)
        if leader is None:
            self.latest, self.latest_leader = weakref.ref(x), name
            return False
        if x is not prev or self.latest_leader != leader:
            raise DQError(f"calibration: {name} read the input of {leader} in the first forward but not in a later "
                          "one; the model's attention runs its projections otherwise than dq expects")
        return True


def owned_prompts(n: int, shard: tuple[int, int]) -> range:
    """The indices of the prompts that process `rank` of `processes` (shard) runs: every processes-th."""
    rank, processes = shard
    return range(rank, n, processes)


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
              on_step: Callable[[StepInfo], None] | None = None,
              plans: dict[str, LayerPlan] | None = None, routes: tuple[str, ...] | None = None,
              shard: tuple[int, int] = (0, 1)) -> CalibrationResult:
    """`routes` (with `plans`): also record 6Bit-Diffusion's trajectories — Γ and Δ per block, and
    E_rel per quantized linear inside the blocks under each activation route.

    `shard` = (rank, processes): run only prompts i with i % processes == rank (data-parallel
    calibration; `reduce_result` combines the processes' results). Prompt i is sampled with seed
    `seed + i` and its tokens are keyed by i in the reservoirs, whichever process runs it."""
    result = CalibrationResult({info.name: LayerStats.new(info.in_features, step_ranges, tokens_per_layer,
                                                          seed + i) for i, info in enumerate(layers)})
    prompt_index = [0]
    shared = SharedInputs(result)

    def observe(info: LinearInfo):
        def hook(module, args):
            x = args[0]
            if shared.follows(info.name, x):
                return
            stats = result.stats[info.name]
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
        shared.forward_done()
        result.forwards += 1
        result.branches_seen.update(state.branches)
        result.steps_seen.setdefault(state.expert, []).append(state.step)

    handles = [adapter.module(info).register_forward_pre_hook(observe(info)) for info in layers]
    handles += [m.register_forward_hook(count, with_kwargs=True) for m in adapter.transformers().values()]
    remove_block_hooks = lambda: None  # noqa: E731
    if routes is not None:
        result.trajectories, more, remove_block_hooks = _trajectory_hooks(
            adapter, layers, plans or {}, routes, len(prompts), steps, prompt_index)
        handles += more
    try:
        for i in owned_prompts(len(prompts), shard):
            prompt = prompts[i]
            prompt_index[0] = i
            for stats in result.stats.values():
                stats.reservoir.begin_stream(i)
            adapter.generate(prompt, negative_prompt=negative_prompt, image=image, steps=steps, guidance=guidance,
                             seed=seed + i, frames=frames, height=height, width=width, on_step=on_step)
    finally:
        for h in handles:
            h.remove()
        remove_block_hooks()
    return result


def reduce_result(result: CalibrationResult, layers: list[LinearInfo], prompts: int, shard: tuple[int, int],
                  group=None, dst: int = 0) -> None:
    """Combine the results of every process of a data-parallel calibration into `dst`'s (a
    collective: every process calls it). Counts add up, branches and steps seen unite, statistics
    merge as `dq_calib.merge` says."""
    import torch.distributed as dist

    from dq_calib.merge import reduce_layer_stats, reduce_trajectories

    _agree_on_shared_inputs(result, group)
    reduce_layer_stats([result.stats[info.name] for info in result.leaders(layers)], group, dst)
    if result.trajectories is not None:
        reduce_trajectories(result.trajectories, list(owned_prompts(prompts, shard)), group, dst)
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, (result.forwards, sorted(result.branches_seen), result.steps_seen), group=group)
    result.forwards = sum(g[0] for g in gathered)
    result.branches_seen = {b for g in gathered for b in g[1]}
    result.steps_seen = {expert: sorted({s for g in gathered for s in g[2].get(expert, [])})
                         for expert in sorted({e for g in gathered for e in g[2]})}
    dist.barrier(group=group)  # nobody leaves (and tears the group down) while `dst` still receives


def _agree_on_shared_inputs(result: CalibrationResult, group) -> None:
    """Every process found the same shared inputs, except one that ran no prompt (more processes
    than prompts), whose statistics are empty: it adopts the others' before the collectives, which
    must see the same layers everywhere."""
    import torch.distributed as dist

    maps = [None] * dist.get_world_size(group)
    dist.all_gather_object(maps, (result.forwards > 0, result.same_input), group=group)
    found = {tuple(sorted(m.items())) for ran, m in maps if ran}
    if len(found) > 1:
        raise DQError("data-parallel calibration: the processes found different layers sharing an input")
    for follower, leader in (dict(found.pop()) if found else {}).items():
        if result.same_input.get(follower) != leader:
            result.share(follower, leader)


# ---- 6Bit-Diffusion trajectories ----------------------------------------------------------------------
TRAJECTORY_HOOK = "dq_calibrate_trajectory"


class BlockObserver(ModelHook):
    """Records Γ(t) and the step-to-step change of Δ = out − in of one block, per batch row (CFG
    branch), into the shared `Trajectories`."""

    def __init__(self, adapter: Adapter, traj: Trajectories, index: int, prompt_index: list[int]):
        super().__init__()
        self.adapter, self.traj, self.index, self.prompt_index = adapter, traj, index, prompt_index
        self.previous: dict[str, tuple[int, int, torch.Tensor]] = {}  # branch -> (prompt, step, Δ row)

    def initialize_hook(self, module):
        self._meta = block_metadata(module)
        return module

    def new_forward(self, module, *args, **kwargs):
        hidden, _ = block_inputs(self._meta, args, kwargs)
        output = self.fn_ref.original_forward(*args, **kwargs)
        out, _ = block_outputs(self._meta, output)
        state, p, traj = self.adapter.state, self.prompt_index[0], self.traj
        if state.step >= traj.steps:
            return output
        g, delta = gamma(hidden, out), (out - hidden).detach().float()
        for row, branch in enumerate(state.branches[: hidden.shape[0]]):
            b = traj.branch_index(branch)
            traj.gamma[p, state.step, b, self.index] = g[row]
            prev = self.previous.get(branch)
            if prev is not None and prev[:2] == (p, state.step - 1):
                traj.delta_rel_l1[p, state.step, b, self.index] = rel_l1_change(delta[row: row + 1], prev[2])[0]
                traj.delta_cos[p, state.step, b, self.index] = cosine(delta[row: row + 1], prev[2])[0]
            self.previous[branch] = (p, state.step, delta[row: row + 1].clone())
        return output


def _trajectory_hooks(adapter: Adapter, layers: list[LinearInfo], plans: dict[str, LayerPlan],
                      routes: tuple[str, ...], prompts: int, steps: int, prompt_index: list[int]):
    blocks = [(f"{c}.{name}", block) for c, model in adapter.transformers().items()
              for name, block in transformer_blocks(model)]
    block_of = {name: i for i, (name, _) in enumerate(blocks)}
    inside = [(info, block_of[b]) for info in layers if info.name in plans
              for b in [_block_name(info, block_of)] if b is not None]
    traj = Trajectories([n for n, _ in blocks], [i.name for i, _ in inside], [b for _, b in inside],
                        list(routes), prompts, steps)
    registries = []
    for i, (_, block) in enumerate(blocks):
        registry = HookRegistry.check_if_exists_or_initialize(block)
        registry.register_hook(BlockObserver(adapter, traj, i, prompt_index), TRAJECTORY_HOOK)
        registries.append(registry)

    def measure(li: int, quantized: QuantLinear):
        def hook(module, args, output):
            state = adapter.state
            if state.step >= traj.steps:
                return
            x, y = args[0], output
            rows = x.shape[0] if x.dim() == 3 else 1
            for r, route in enumerate(routes):
                quantized.route = route
                err = rel_error(quantized(x).reshape(rows, -1), y.reshape(rows, -1))
                for row, branch in enumerate(state.branches[:rows]):
                    traj.erel[prompt_index[0], state.step, traj.branch_index(branch), li, r] = err[row]
        return hook

    handles = []
    for li, (info, _) in enumerate(inside):
        linear = adapter.module(info)
        quantized = QuantLinear.from_linear(linear, _weights_only(plans[info.name]), info.name,
                                            sees_video=info.sees_video).to(linear.weight.device)
        quantized.forward_state = adapter.state
        handles.append(linear.register_forward_hook(measure(li, quantized)))

    def remove():
        for registry in registries:
            registry.remove_hook(TRAJECTORY_HOOK, recurse=False)

    return traj, handles, remove


def _block_name(info: LinearInfo, block_of: dict[str, int]) -> str | None:
    for name in block_of:
        if (info.name + ".").startswith(name + "."):
            return name
    return None


def _weights_only(plan: LayerPlan) -> LayerPlan:
    """E_rel is measured with the recipe's quantized weights. Methods that need a fit from this very
    calibration (smoothing, low rank) are measured with their plain round-to-nearest weights."""
    if plan.method in CALIBRATED_METHODS:
        return replace(plan, method="rtn", rank=0, smoothing=None)
    return plan


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
    tensors_path, json_path = artifact_paths(out)
    tensors = {}
    for info in result.leaders(layers):  # a layer sharing another's input is stored once, by that one
        tensors.update(result.stats[info.name].to_tensors(info.name))
    if result.trajectories is not None:
        tensors.update(result.trajectories.to_tensors())
        summary = {**summary, "trajectories": result.trajectories.describe()}
    meta = {"format": "dq-calibration", "format_version": FORMAT_VERSION, "recipe": recipe_text,
            "dq_version": __version__}
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    write_atomic(tensors_path, lambda tmp: save_file(contiguous, tmp, metadata=meta))
    doc = {**meta, **summary, "tensors": tensors_path.name,
           "layers": {i.name: {"role": i.role, "in_features": i.in_features, "out_features": i.out_features,
                               "tokens": result.stats[i.name].reservoir.filled,
                               "tokens_seen": result.stats[i.name].reservoir.seen}
                         | ({"same_input_as": result.same_input[i.name]} if i.name in result.same_input else {})
                         for i in layers}}
    write_atomic(json_path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    return tensors_path, json_path
