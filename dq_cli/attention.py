"""Attention backends for the diffusers video DiTs: `sdpa` (diffusers' own) or `sage8` (dq's 8-bit
attention, `dq_kernels.sage_attention`).

How it is wired. diffusers' attention backends are an enum (`AttentionBackendName`) that a project
cannot extend, and the families reach attention differently: Wan and LTX through
`dispatch_attention_fn` (whose native backend calls `F.scaled_dot_product_attention`), CogVideoX's
processor by calling `F.scaled_dot_product_attention` itself. So dq leaves the processors alone and
runs each self-attention module (`attn1` in Wan, LTX and CogVideoX — CogVideoX's attn1 is the joint
text+video attention) under a `TorchFunctionMode` that sends SDPA calls it can take to
`torch.ops.dq.sage8_attention` and lets everything else through — the mechanism diffusers' own
`AttentionScoreSkipFunctionMode` (hooks/layer_skip.py) uses. Cross-attention (attn2: 512 text keys, a
small share of the FLOPs) stays on SDPA. Calls that the kernel cannot take (a mask, dropout, causal, a
head dim outside 32/64/128) go to SDPA and are counted with the reason.

The mode is entered by the module's class, not by a `diffusers.hooks` hook: a routed module becomes an
instance of a subclass of its own class (one per class, `_routed_class`) whose `forward` enters the mode.
A hook gives every module its own forward object, on whose identity dynamo guards, so a regionally
compiled block recompiled for each block until dynamo's limit of 8 and ran the rest eagerly (measured
on 8 Wan A14B blocks at 480p on an H200: sage8 + compile 0.96× BF16 compiled, against 1.09× eager).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dq_cli.errors import DQError

BACKENDS = ("sdpa", "sage8")
SELF_ATTENTION = re.compile(r"(^|\.)attn1$")


_FALLBACKS: Counter = Counter()  # reason -> executions of dq::sdpa_fallback in this process


@dataclass
class AttentionStats:
    """What the routed modules did since the stats were made (or reset): SDPA calls sent to the 8-bit
    kernel and the ones left on SDPA with the reason. Both are counted by the ops that run them, so
    calls inside compiled blocks count too (a count kept here would be read while tracing, and dynamo
    would recompile at every call); CUDA graph replays run no Python and count nothing."""

    backend: str = "sdpa"
    modules: int = 0
    _start: tuple = field(default_factory=lambda: _counts())

    @property
    def routed(self) -> int:
        return _counts()[0] - self._start[0]

    @property
    def fallback(self) -> Counter:
        return _counts()[1] - self._start[1]

    def reset(self) -> None:
        self._start = _counts()

    def line(self) -> str:
        """One line on what the 8-bit attention did (calls routed, calls left on SDPA and why)."""
        left = ", ".join(f"{n} {why}" for why, n in self.fallback.items())
        line = f"attention {self.backend}: {self.routed} self-attention calls in 8 bits"
        if not self.routed and not self.fallback:
            line += " (no SDPA call reached the routed modules: is DIFFUSERS_ATTN_BACKEND set to another backend?)"
        return line + (f"; left on SDPA: {left}" if left else "")

    def as_dict(self) -> dict:
        return {"backend": self.backend, "modules": self.modules, "routed": self.routed,
                "fallback": dict(self.fallback)}


def _counts() -> tuple[int, Counter]:
    from dq_kernels.sage_attention import op_calls

    return op_calls(), Counter(_FALLBACKS)


@torch.library.custom_op("dq::sdpa_fallback", mutates_args=())
def sdpa_fallback(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
                  dropout_p: float, is_causal: bool, scale: float | None, enable_gqa: bool,
                  reason: str) -> torch.Tensor:
    """SDPA for a call the 8-bit kernel cannot take, counted under `reason`. Contiguous out (the fake
    says so)."""
    _FALLBACKS[reason] += 1
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale, enable_gqa=enable_gqa).contiguous()


@sdpa_fallback.register_fake
def _(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, reason):
    return query.new_empty(*query.shape[:-1], value.shape[-1])


def _unsupported(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa) -> str | None:
    from dq_kernels.sage_attention import supports

    if attn_mask is not None:
        return "attention mask"
    if dropout_p:
        return "dropout"
    if is_causal:
        return "causal"
    if enable_gqa:
        return "grouped-query attention"
    return supports(q, k, v)


# Tensor methods that torch implements in Python through `super()`: under a TorchFunctionMode dynamo
# cannot trace those calls (a graph break in every compiled block; pytorch/pytorch#179853, fixed
# upstream by #183850), while their functional forms trace. Same results. (Compared by identity: a
# dict keyed by the methods is not looked up under dynamo.)
_FUNCTIONAL = ((torch.Tensor.unflatten, torch.unflatten), (torch.Tensor.split, torch.split))


class Sage8Mode(torch.overrides.TorchFunctionMode):
    """Inside it, `F.scaled_dot_product_attention(q, k, v, ...)` runs the 8-bit kernel when it can."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
            call = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
            call |= dict(zip(names, args)) | kwargs
            reason = _unsupported(call["query"], call["key"], call["value"], call["attn_mask"], call["dropout_p"],
                                  call["is_causal"], call["enable_gqa"])
            if reason is None:
                from dq_kernels.sage_attention import sage_attention

                return sage_attention(call["query"], call["key"], call["value"], call["scale"])
            return sdpa_fallback(**call, reason=reason)
        for method, functional in _FUNCTIONAL:
            if func is method:
                return functional(*args, **kwargs)
        return func(*args, **kwargs)


_ROUTED: dict[type, type] = {}


def _routed_class(cls: type) -> type:
    """`cls` with its forward run under `Sage8Mode`. One subclass per class, so all blocks share one
    forward."""
    if cls not in _ROUTED:
        def forward(self, *args, **kwargs):
            with Sage8Mode():
                return super(routed, self).forward(*args, **kwargs)

        routed = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                              "_dq_routed_from": cls})
        _ROUTED[cls] = routed
    return _ROUTED[cls]


def _unroute(module: torch.nn.Module) -> None:
    original = type(module).__dict__.get("_dq_routed_from")
    if original is not None:
        module.__class__ = original


def self_attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if SELF_ATTENTION.search(n) and hasattr(m, "processor")]


def set_attention(models: dict[str, torch.nn.Module], backend: str) -> AttentionStats:
    """Route the self-attention of every model in `models` through `backend` ('sdpa' restores the
    modules). Returns the stats of the calls made from now on (counted by the ops)."""
    if backend not in BACKENDS:
        raise DQError(f"attention backend '{backend}' is not one of {', '.join(BACKENDS)}")
    stats = AttentionStats(backend=backend)
    for model in models.values():
        for _, module in self_attention_modules(model):
            _unroute(module)
            if backend == "sage8":
                module.__class__ = _routed_class(type(module))
                stats.modules += 1
    if backend == "sage8" and stats.modules == 0:
        raise DQError("attention sage8: found no self-attention modules (attn1) to route")
    return stats
