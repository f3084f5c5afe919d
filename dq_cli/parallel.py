"""Several processes under `torchrun`: the process group, and context parallelism for generation.

- `dq calibrate` under `torchrun --nproc-per-node N` is data-parallel: each process runs every N-th
  prompt, the statistics are combined with `torch.distributed` (dq_calib/merge.py) and process 0
  writes the artifact.
- `dq generate --context-parallel N` under `torchrun --nproc-per-node N` shards the token sequence
  over the N processes with diffusers' `ContextParallelConfig` (Ulysses attention: an all-to-all
  gives each process every token of 1/N of the heads), and the quantized layers keep their scales
  whole-sequence (dq_cli/quant/sequence.py), so the video is the one-process video.

CPU processes talk through gloo; GPU processes through NCCL, with gloo beside it for the CPU
tensors the calibration statistics live in ("cpu:gloo,cuda:nccl"). Imported by the commands
only when they run (it imports torch and diffusers).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers import ContextParallelConfig
from diffusers.models.attention import AttentionModuleMixin
from diffusers.hooks import HookRegistry, ModelHook
from torch.distributed.device_mesh import init_device_mesh

from dq_cli.errors import DQError
from dq_cli.quant.runtime import transformer_blocks
from dq_cli.quant.sequence import SequenceShard


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Started by torchrun (or another launcher that sets WORLD_SIZE) with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise DQError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r}: not a number") from None


@contextmanager
def world(device: str):
    """Join the process group that torchrun describes in the environment (env://); yields a `World`,
    or None when this is a single process. `device` is what the user asked for ("cpu", "cuda"):
    under torchrun each process takes the GPU of its LOCAL_RANK. A group that is already initialised
    (a caller's own) is used and left alone; one made here is destroyed on the way out."""
    if not launched():
        yield None
        return
    if not dist.is_available():
        raise DQError("this torch build has no torch.distributed: it cannot run several processes")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if ":" in device:
            raise DQError(f"--device {device}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                          "give --device cuda")
        if local_rank >= torch.cuda.device_count():
            raise DQError(f"LOCAL_RANK {local_rank}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                          "start at most that many processes per node")
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    owned = not dist.is_initialized()
    if owned:
        try:
            dist.init_process_group(backend)
        except (ValueError, RuntimeError) as e:
            raise DQError(f"cannot join the process group ({e}); start dq with torchrun") from None
    try:
        yield World(dist.get_rank(), dist.get_world_size(), device)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


# ---- context parallelism --------------------------------------------------------------------------
SEQUENCE_CHECK_HOOK = "dq_sequence_check"
MASK_HEADS_HOOK = "dq_cp_mask_heads"


@dataclass
class SplitStats:
    """What the processes held in the last forward: video tokens in all, and in this process's
    first block (the proof that the sequence was split)."""

    degree: int
    video_tokens: int = 0
    local_tokens: int = 0

    def line(self) -> str:
        return (f"context-parallel over {self.degree} processes (Ulysses): {self.local_tokens} of "
                f"{self.video_tokens} video tokens per process")


class SequenceCheck(ModelHook):
    """Before diffusers splits a transformer's inputs (registered after its hooks, so it runs first):
    every sequence it splits must divide into equal slices; say so instead of failing an assertion."""

    def __init__(self, adapter, stats: SplitStats):
        super().__init__()
        self.adapter, self.stats = adapter, stats

    def pre_forward(self, module, *args, **kwargs):
        (t, h, w), _ = self.adapter.grid_of(module, args, kwargs)
        video = self.stats.video_tokens = t * h * w
        text = kwargs.get("encoder_hidden_states")
        split_text = "encoder_hidden_states" in (getattr(module, "_cp_plan", None) or {}).get("", {})
        degree = self.stats.degree
        if video % degree:
            what = f"{video} video tokens ({t}×{h}×{w})"
        elif split_text and text is not None and text.shape[1] % degree:
            what = f"{text.shape[1]} text tokens"
        else:
            return args, kwargs
        raise DQError(f"--context-parallel {degree}: the sequence splits into {degree} equal slices "
                      f"only, and this one has {what}; change --frames/--height/--width or the number of processes")


def enable_context_parallel(adapter, world: World, degree: int) -> SplitStats:
    """Shard the sequence of every transformer of the adapter over the `degree` processes (Ulysses).
    Call it after dq's own hooks are on the blocks, so that diffusers' split runs outside them and
    they see this process's slice."""
    if degree != world.size:
        raise DQError(f"--context-parallel {degree}: dq runs {world.size} processes; give "
                      f"--context-parallel {world.size} (every process holds one slice of the sequence)")
    for name, model in adapter.transformers().items():
        cls = type(model).__name__
        if getattr(model, "_cp_plan", None) is None:
            raise DQError(f"--context-parallel: {cls} ({adapter.family}) has no context-parallel plan in "
                          "diffusers (its _cp_plan is None); Wan 2.2, LTX-Video and dq-tiny have one")
        heads = model.config.get("num_attention_heads")
        if heads is not None and heads % degree:
            raise DQError(f"--context-parallel {degree}: Ulysses attention gives each process 1/{degree} of the "
                          f"attention heads, and {name} has {heads}; pick a divisor of {heads}")
    device_type = "cuda" if world.device.startswith("cuda") else "cpu"
    mesh = init_device_mesh(device_type, (1, degree), mesh_dim_names=("ring", "ulysses"))
    stats = SplitStats(degree)

    def count(module, args, output):
        stats.local_tokens = int((output[0] if isinstance(output, tuple) else output).shape[1])

    for name, model in adapter.transformers().items():
        try:
            with _cpu_device_count():
                model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree, mesh=mesh))
        except ValueError as e:  # e.g. an attention backend without context parallelism
            raise DQError(f"--context-parallel: {name}: {e}") from None
        HookRegistry.check_if_exists_or_initialize(model).register_hook(SequenceCheck(adapter, stats),
                                                                        SEQUENCE_CHECK_HOOK)
        for module in model.modules():
            if isinstance(module, AttentionModuleMixin):
                HookRegistry.check_if_exists_or_initialize(module).register_hook(
                    MaskHeads(mesh["ulysses"].get_local_rank(), degree), MASK_HEADS_HOOK)
        blocks = transformer_blocks(model)
        if blocks:  # the first block's output: after diffusers split its input (Wan) or the model's (LTX)
            blocks[0][1].register_forward_hook(count)
    ulysses = mesh["ulysses"]
    adapter.state.shard = SequenceShard(ulysses.get_group(), ulysses.get_local_rank(), degree)
    return stats


class _MaskHeadsMode(torch.overrides.TorchFunctionMode):
    """Under Ulysses an SDPA call sees 1/N of the heads (diffusers' TemplatedUlyssesAttention all-to-alls
    q, k, v to [B, heads/N, S, D] and all-gathers a sequence-split mask along its last dim), but a mask
    that a processor already shaped per head keeps all of them: LTX-Video's cross-attention mask is
    [B, heads, 1, S] (diffusers 0.42.1 models/transformers/transformer_ltx.py:77), and SDPA fails with
    "The size of tensor a (heads/N) must match the size of tensor b (heads)". Give SDPA this process's
    heads of the mask (chunk r of the all-to-all holds heads [r·heads/N, (r+1)·heads/N))."""

    def __init__(self, rank: int, degree: int):
        super().__init__()
        self.rank, self.degree = rank, degree

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            args, kwargs = list(args), dict(kwargs)
            query = args[0] if args else kwargs["query"]
            in_args = len(args) > 3
            mask = args[3] if in_args else kwargs.get("attn_mask")
            heads = query.shape[1] if query.dim() == 4 else None
            if mask is not None and heads and mask.dim() == 4 and mask.shape[1] == heads * self.degree:
                mask = mask[:, self.rank * heads: (self.rank + 1) * heads]
                if in_args:
                    args[3] = mask
                else:
                    kwargs["attn_mask"] = mask
        return func(*args, **kwargs)


class MaskHeads(ModelHook):
    """Runs an attention module under `_MaskHeadsMode`."""

    def __init__(self, rank: int, degree: int):
        super().__init__()
        self.rank, self.degree = rank, degree

    def new_forward(self, module, *args, **kwargs):
        # (hidden_states, encoder_hidden_states, attention_mask, ...) in diffusers' attention modules
        mask = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)
        if mask is None:  # nothing to split (Wan; LTX's self-attention): skip the mode's per-op Python hook
            return self.fn_ref.original_forward(*args, **kwargs)
        with _MaskHeadsMode(self.rank, self.degree):
            return self.fn_ref.original_forward(*args, **kwargs)



@contextmanager
def _cpu_device_count():
    """diffusers 0.42.1 (models/modeling_utils.py:1719, `_resolve_parallel_config`) picks the device as
    `rank % torch.accelerator.device_count()`: a ZeroDivisionError on a host without an accelerator.
    There, count one device while it runs (CPU processes ignore the index)."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original
