"""torch.compile for a model's transformer blocks, shared by `dq generate --compile` and `dq bench e2e
--compile on`: regional compilation (each block compiled once for all, as diffusers'
`compile_repeated_blocks`), entered and left as a context so the model is unchanged afterwards."""

from __future__ import annotations

import os

from torch import nn

from dq_cli.errors import DQError

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CHOICES = ("off", "on", "reduce-overhead")  # `dq generate --compile`, `dq_cli.load(compile=)`
# Not tried on a GPU: CUDA graphs between which the routed linears run eagerly, and whose outputs the
# Temporal Delta Cache keeps across steps.
STEPWISE_GRAPHS = ("compile mode reduce-overhead: not with 6Bit-Diffusion's per-step routing (CUDA graphs around "
                   "its eager routed linears and TDC caches were never run); compile with `on` instead")


def default_backend() -> str:
    """inductor, unless DQ_COMPILE_BACKEND names another (tests use aot_eager: no C++ compile)."""
    return os.environ.get("DQ_COMPILE_BACKEND", "inductor")


def exact_casts(adapter):
    """Inductor settings under which a model's compiled reference path rounds as eager does, where it
    has one (on the CPU, or formats no kernel runs; a null context otherwise). Inductor drops a cast
    to a 16-bit type that an upcast follows (`emulate_precision_casts` off, its default), and the
    reference formats (BF16 group scales) then quantize otherwise than eager — up to 5% of a
    DeltaQuant layer's output range on the CPU. Not where every layer is on the kernels (custom ops
    that inductor does not look into): there the emulation cost the BF16 remainder of a Wan A14B
    block ~1% in time and 0.6 GiB of peak memory (H200, 2 blocks, 480p)."""
    from contextlib import nullcontext

    import torch._inductor.config

    from dq_cli.quant.kernel_path import plan_on_kernels
    from dq_cli.quant.linear import QuantLinear

    layers = [m for model in adapter.transformers().values() for m in model.modules() if isinstance(m, QuantLinear)]
    on_cuda = all(p.is_cuda for model in adapter.transformers().values() for p in model.parameters())
    if on_cuda and all(plan_on_kernels(layer.plan) for layer in layers):
        return nullcontext()
    return torch._inductor.config.patch(emulate_precision_casts=True)


def refusal(adapter, mode: str) -> str | None:
    """Why the blocks of this model cannot be compiled in `mode`, or None."""
    from dq_cli.quant.runtime import block_hook, transformer_blocks

    models = adapter.transformers().values()
    if mode == "reduce-overhead" and any(block_hook(b) for m in models for _, b in transformer_blocks(m)):
        return STEPWISE_GRAPHS
    return None


def check_choice(choice: str, option: str = "--compile") -> None:
    if choice not in CHOICES:
        raise DQError(f"{option} {choice}: expected off, on or reduce-overhead")


def for_choice(adapter, choice: str):
    """The compile context of a `--compile` choice: a no-op for off; "reduce-overhead" replays the
    blocks as CUDA graphs."""
    from contextlib import nullcontext

    check_choice(choice)
    if choice == "off":
        return nullcontext()
    return RegionalCompile(adapter, default_backend(), "reduce-overhead" if choice == "reduce-overhead" else "default")


class RegionalCompile:
    """torch.compile on each transformer block (regional compilation, as diffusers'
    `compile_repeated_blocks`), with dq's modules traced into the blocks, no graph breaks:
    - quantized linears: their kernels are custom ops, and the forward tracker resolves DeltaQuant's
      cube outside the blocks, so a block recompiles once when the cube schedule moves on;
    - 8-bit attention: the routing's TorchFunctionMode traces (dq_cli/attention.py), and the op is a
      custom op.
    - 6Bit-Diffusion: its block hook decides routes and TDC skips in Python at every step, so the
      block's own forward is compiled beneath the hook and the routed linears run eagerly between
      the compiled pieces (graph breaks, one set of graphs for every route mix and step).
    `mode` is torch.compile's; with "reduce-overhead" each transformer call first begins a new CUDA
    graph step, without which a block's replay overwrote buffers still in use (LTX-Video, H200).
    Compiled under `exact_casts()`."""

    def __init__(self, adapter, backend: str, mode: str = "default"):
        self.adapter, self.backend, self.mode = adapter, backend, mode
        self.blocks: list[nn.Module] = []
        self.handles: list = []
        self.config = None
        self.stepwise = False  # 6Bit's block hooks found: their bodies compiled beneath them

    def __enter__(self):
        import torch._dynamo
        from dq_cli.quant.runtime import block_hook, transformer_blocks

        if (why := refusal(self.adapter, self.mode)) is not None:
            raise DQError(why)
        models = self.adapter.transformers().values()
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        for model in models:
            blocks = [b for _, b in transformer_blocks(model)]
            if not blocks:
                raise DQError(f"torch.compile: found no transformer blocks in {type(model).__name__}")
            mode = None if self.mode == "default" else self.mode
            for block in blocks:
                hook = block_hook(block)
                if hook is None:
                    block.compile(backend=self.backend, mode=mode)
                else:
                    hook.compiled_body = torch.compile(hook.fn_ref.original_forward, backend=self.backend, mode=mode)
                    self.stepwise = True
                self.blocks.append(block)
            if self.mode == "reduce-overhead":  # CUDA graph replays may reuse the last forward's buffers
                self.handles.append(model.register_forward_pre_hook(
                    lambda *_: torch.compiler.cudagraph_mark_step_begin()))
        self.config = exact_casts(self.adapter)  # the blocks compile at their first call, inside this context
        self.config.__enter__()
        return self

    def summary(self) -> str:
        from torch._dynamo.utils import counters

        graphs = counters["stats"].get("unique_graphs", 0)
        breaks = sum(counters["graph_break"].values())
        mode = "" if self.mode == "default" else f", mode {self.mode}"
        why = " (6Bit's routed linears run eagerly between the pieces)" if self.stepwise else ""
        return (f"torch.compile ({self.backend}{mode}): {len(self.blocks)} blocks compiled, {graphs} graphs, "
                f"{breaks} graph breaks{why}")

    def __exit__(self, *exc):
        import torch._dynamo

        from dq_cli.quant.runtime import block_hook

        for block in self.blocks:
            block._compiled_call_impl = None
            if (hook := block_hook(block)) is not None:
                hook.compiled_body = None
        for handle in self.handles:
            handle.remove()
        if self.config is not None:
            self.config.__exit__(None, None, None)
        torch._dynamo.reset()
