"""How `dq bench e2e` measures time: a clock (CUDA events on a GPU, timing the stream without
synchronising; perf_counter on the CPU), marks around every call of the top-level transformers, a
timed sampling run, regional torch.compile, and the per-step breakdown.

The breakdown (per step: linears / attention / other) comes from marks around every linear layer and
attention module in one extra eager run (hooks would split compiled graphs, so compiled rows have
none). Events time the GPU stream without synchronising, so the instrumented run's step time stays
within a few percent of the plain one.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from dq_cli.errors import DQError

if TYPE_CHECKING:
    from dq_cli.bench_e2e import Workload

# ---- measuring -------------------------------------------------------------------------------------------
class Clock:
    """CUDA events on a GPU (timing the stream without synchronising), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else 1000.0 * (b - a)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


class ForwardTimer:
    """Times every call of the top-level transformers (hooks on them only: compiled blocks inside
    are untouched)."""

    def __init__(self, adapter, clock: Clock):
        self.adapter, self.clock = adapter, clock
        self.calls: list[tuple[str, int, object, object]] = []
        self._handles = []
        self._open: dict[str, tuple[int, object]] = {}

    def __enter__(self):
        for component, model in self.adapter.transformers().items():
            def pre(module, args, kwargs, component=component):
                self._open[component] = (self.adapter.batch_size(args, kwargs), self.clock.mark())

            def post(module, args, output, component=component):
                batch, start = self._open.pop(component)
                self.calls.append((component, batch, start, self.clock.mark()))

            self._handles.append(model.register_forward_pre_hook(pre, with_kwargs=True))
            self._handles.append(model.register_forward_hook(post))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def times_ms(self) -> list[float]:
        return [self.clock.ms(s, e) for _, _, s, e in self.calls]


ATTENTION_MODULE = re.compile(r"(^|\.)attn\d*$")


class Breakdown:
    """Marks around every linear layer and attention module. Attention = the attention modules less
    the linears inside them (the SDPA or 8-bit kernel, QK norms, RoPE); linears = every nn.Linear or
    QuantLinear; other = the rest of the step."""

    def __init__(self, adapter, clock: Clock):
        self.adapter, self.clock = adapter, clock
        self.records: list[tuple[str, bool, object, object]] = []   # (kind, inside attention, start, end)
        self._stack: list[tuple[str, object]] = []
        self._handles = []
        self.linears = self.attentions = 0

    def __enter__(self):
        for model in self.adapter.transformers().values():
            for name, module in model.named_modules():
                if isinstance(module, nn.Linear) or getattr(module, "is_quant_linear", False):
                    kind = "linear"
                    self.linears += 1
                elif ATTENTION_MODULE.search(name) and hasattr(module, "processor"):
                    kind = "attention"
                    self.attentions += 1
                else:
                    continue
                self._handles.append(module.register_forward_pre_hook(lambda m, a, kind=kind: self._push(kind)))
                self._handles.append(module.register_forward_hook(lambda m, a, o: self._pop()))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _push(self, kind: str) -> None:
        self._stack.append((kind, self.clock.mark()))

    def _pop(self) -> None:
        kind, start = self._stack.pop()
        inside = any(k == "attention" for k, _ in self._stack)
        self.records.append((kind, inside, start, self.clock.mark()))

    def totals_ms(self) -> tuple[float, float]:
        """(linears, attention without its linears), summed over the run."""
        lin = lin_in_attn = attn = 0.0
        for kind, inside, start, end in self.records:
            ms = self.clock.ms(start, end)
            if kind == "linear":
                lin += ms
                lin_in_attn += ms if inside else 0.0
            else:
                attn += ms
        return lin, attn - lin_in_attn


def timed_run(workload: Workload, steps: int, clock: Clock) -> tuple[torch.Tensor, list[float], float]:
    """(output, per-step ms, end-to-end s)."""
    marks = []
    clock.sync()
    t0 = time.perf_counter()
    start = clock.mark()
    out = workload.run(steps, on_step=lambda i: marks.append(clock.mark()))
    clock.sync()
    total = time.perf_counter() - t0
    return out, [clock.ms(a, b) for a, b in zip([start] + marks, marks)], total


class Compiled:
    """torch.compile on each transformer block (regional compilation, as diffusers'
    `compile_repeated_blocks`). dq's quantized linears are traced into the blocks: their kernels are
    custom ops, and the forward tracker resolves DeltaQuant's cube outside the blocks, so a block
    recompiles once when the cube schedule moves on, not every step. The self-attention modules routed
    to dq's 8-bit kernel run eagerly inside (graph breaks): dynamo cannot trace the tensor methods
    that diffusers' processors call under the routing's TorchFunctionMode (`Tensor.unflatten`'s
    `super()` call), so those modules' projections, norms and RoPE are not compiled either.
    6Bit-Diffusion's per-step routing is not compiled (dq_cli/bench_e2e.py skips it)."""

    def __init__(self, adapter, backend: str, mode: str = "default"):
        self.adapter, self.backend, self.mode = adapter, backend, mode
        self.blocks: list[nn.Module] = []
        self.wrapped: list[tuple[nn.Module, object]] = []
        self.handles: list = []

    def __enter__(self):
        import torch._dynamo
        from dq_cli.attention import HOOK_NAME
        from dq_cli.quant.runtime import transformer_blocks

        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        for model in self.adapter.transformers().values():
            for _, module in model.named_modules():
                registry = getattr(module, "_diffusers_hook", None)
                routed = registry is not None and registry.get_hook(HOOK_NAME) is not None
                if routed:
                    self.wrapped.append((module, module.__dict__.get("forward")))
                    module.forward = torch.compiler.disable(module.forward, recursive=True)
            blocks = [b for _, b in transformer_blocks(model)]
            if not blocks:
                raise DQError(f"torch.compile: found no transformer blocks in {type(model).__name__}")
            for block in blocks:
                block.compile(backend=self.backend, mode=None if self.mode == "default" else self.mode)
                self.blocks.append(block)
            if self.mode == "reduce-overhead":  # CUDA graph replays may reuse the last forward's buffers
                self.handles.append(model.register_forward_pre_hook(
                    lambda *_: torch.compiler.cudagraph_mark_step_begin()))
        return self

    def summary(self) -> str:
        from torch._dynamo.utils import counters

        graphs = counters["stats"].get("unique_graphs", 0)
        breaks = sum(counters["graph_break"].values())
        mode = "" if self.mode == "default" else f", mode {self.mode}"
        return (f"torch.compile ({self.backend}{mode}): {len(self.blocks)} blocks compiled, {graphs} graphs, "
                f"{breaks} graph breaks; {len(self.wrapped)} dq modules run eagerly inside")

    def __exit__(self, *exc):
        import torch._dynamo

        for block in self.blocks:
            block._compiled_call_impl = None
        for handle in self.handles:
            handle.remove()
        for module, original in self.wrapped:
            if original is None:
                del module.forward
            else:
                module.forward = original
        torch._dynamo.reset()


def run_breakdown(workload: Workload, clock: Clock, steps: int) -> dict:
    with Breakdown(workload.adapter, clock) as marks:
        _, step_ms, _ = timed_run(workload, steps, clock)
    linears, attention = marks.totals_ms()
    total = sum(step_ms)
    n = max(len(step_ms), 1)
    return {"steps": len(step_ms), "total_ms": total / n, "linears_ms": linears / n, "attention_ms": attention / n,
            "other_ms": (total - linears - attention) / n, "linear_modules": marks.linears,
            "attention_modules": marks.attentions}

