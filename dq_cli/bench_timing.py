"""How `dq bench e2e` measures time: a clock (CUDA events on a GPU, timing the stream without
synchronising; perf_counter on the CPU), marks around every call of the top-level transformers, a
timed sampling run and the per-step breakdown (regional torch.compile: dq_cli/compile.py).

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


def run_breakdown(workload: Workload, clock: Clock, steps: int) -> dict:
    with Breakdown(workload.adapter, clock) as marks:
        _, step_ms, _ = timed_run(workload, steps, clock)
    linears, attention = marks.totals_ms()
    total = sum(step_ms)
    n = max(len(step_ms), 1)
    return {"steps": len(step_ms), "total_ms": total / n, "linears_ms": linears / n, "attention_ms": attention / n,
            "other_ms": (total - linears - attention) / n, "linear_modules": marks.linears,
            "attention_modules": marks.attentions}

