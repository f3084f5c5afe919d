"""The one entry point that turns a model's linear layers into `QuantLinear`s per a plan."""

from __future__ import annotations

from typing import Callable

from torch import nn

from dq_cli.models.base import Adapter
from dq_cli.quant.linear import QuantLinear
from dq_cli.quant.plan import LayerPlan


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def quantize_model(adapter: Adapter, plans: dict[str, LayerPlan],
                   on_layer: Callable[[str], None] | None = None) -> int:
    """Replace every planned layer in place; returns how many were replaced."""
    count = 0
    for info in adapter.linears():
        plan = plans.get(info.name)
        if plan is None:
            continue
        linear = adapter.module(info)
        quantized = QuantLinear.from_linear(linear, plan, info.name)
        set_submodule(adapter.transformers()[info.component], info.module_name, quantized)
        count += 1
        if on_layer:
            on_layer(info.name)
    return count
