"""Attention backends for the diffusers video DiTs: `sdpa` (diffusers' own) or `sage8` (dq's 8-bit
attention, `dq_kernels.sage_attention`).

How it is wired. diffusers' attention backends are an enum (`AttentionBackendName`) that a project
cannot extend, and the families reach attention differently: Wan and LTX through
`dispatch_attention_fn` (whose native backend calls `F.scaled_dot_product_attention`), CogVideoX's
processor by calling `F.scaled_dot_product_attention` itself. So dq leaves the processors alone and
puts a `diffusers.hooks.ModelHook` on each self-attention module (`attn1` in Wan, LTX and
CogVideoX — CogVideoX's attn1 is the joint text+video attention) whose `new_forward` runs the
module under a `TorchFunctionMode` that sends SDPA calls it can take to `torch.ops.dq.sage8_attention`
and lets everything else through — the mechanism diffusers' own `AttentionScoreSkipFunctionMode`
(hooks/layer_skip.py) uses. Cross-attention (attn2: 512 text keys, a small share of the FLOPs)
stays on SDPA. Calls that the kernel cannot take (a mask, dropout, causal, a head dim outside
32/64/128) go to SDPA and are counted with the reason.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook

from dq_cli.errors import DQError

BACKENDS = ("sdpa", "sage8")
HOOK_NAME = "dq_attention"
SELF_ATTENTION = re.compile(r"(^|\.)attn1$")


@dataclass
class AttentionStats:
    """What the routed modules did: SDPA calls sent to the 8-bit kernel, and the ones left on SDPA."""

    backend: str = "sdpa"
    modules: int = 0
    routed: int = 0
    fallback: Counter = field(default_factory=Counter)  # reason -> calls

    def as_dict(self) -> dict:
        return {"backend": self.backend, "modules": self.modules, "routed": self.routed,
                "fallback": dict(self.fallback)}


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

    def __init__(self, stats: AttentionStats):
        super().__init__()
        self.stats = stats

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
            call = dict(zip(names, args)) | kwargs
            q, k, v = call["query"], call["key"], call["value"]
            reason = _unsupported(q, k, v, call.get("attn_mask"), call.get("dropout_p", 0.0),
                                  call.get("is_causal", False), call.get("enable_gqa", False))
            if reason is None:
                from dq_kernels.sage_attention import sage_attention

                self.stats.routed += 1
                return sage_attention(q, k, v, call.get("scale"))
            self.stats.fallback[reason] += 1
        for method, functional in _FUNCTIONAL:
            if func is method:
                return functional(*args, **kwargs)
        return func(*args, **kwargs)


class Sage8Hook(ModelHook):
    """Runs one attention module's forward under `Sage8Mode`."""

    def __init__(self, stats: AttentionStats):
        super().__init__()
        self.stats = stats

    def new_forward(self, module, *args, **kwargs):
        with Sage8Mode(self.stats):
            return self.fn_ref.original_forward(*args, **kwargs)


def self_attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if SELF_ATTENTION.search(n) and hasattr(m, "processor")]


def set_attention(models: dict[str, torch.nn.Module], backend: str) -> AttentionStats:
    """Route the self-attention of every model in `models` through `backend` ('sdpa' removes dq's
    hooks). Returns the stats object the hooks count into."""
    if backend not in BACKENDS:
        raise DQError(f"attention backend '{backend}' is not one of {', '.join(BACKENDS)}")
    stats = AttentionStats(backend=backend)
    for model in models.values():
        for _, module in self_attention_modules(model):
            registry = HookRegistry.check_if_exists_or_initialize(module)
            if registry.get_hook(HOOK_NAME) is not None:
                registry.remove_hook(HOOK_NAME, recurse=False)
            if backend == "sage8":
                registry.register_hook(Sage8Hook(stats), HOOK_NAME)
                stats.modules += 1
    if backend == "sage8" and stats.modules == 0:
        raise DQError("attention sage8: found no self-attention modules (attn1) to route")
    return stats
