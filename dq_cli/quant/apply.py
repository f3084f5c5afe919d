"""The one entry point that turns a model's linear layers into `QuantLinear`s per a plan."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from torch import nn

from dq_calib.artifact import Calibration
from dq_calib.weights import WeightFit, fit_layer
from dq_cli.errors import DQError
from dq_cli.models.base import Adapter, LinearInfo
from dq_cli.models.fusion import part_names
from dq_cli.quant.linear import QuantLinear, uses_low_rank, uses_smoothing
from dq_cli.quant.plan import CALIBRATED_METHODS, LayerPlan


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def needs_calibration(plans: dict[str, LayerPlan]) -> bool:
    return any(p.method in CALIBRATED_METHODS for p in plans.values())


Fit = Callable[[LinearInfo, nn.Linear, LayerPlan], tuple[WeightFit, LayerPlan]]


def quantize_model(adapter: Adapter, plans: dict[str, LayerPlan], calibration: Calibration | None = None,
                   on_layer: Callable[[str, WeightFit | None], None] | None = None, fit_layer: Fit | None = None
                   ) -> int:
    """Replace every planned layer in place; returns how many were replaced. The calibrated methods'
    layers are fitted from `calibration`, or by `fit_layer` (e.g. `dq bench e2e`'s data-free fit on
    random weights), which may also change the layer's plan (in `plans`)."""
    count = 0
    for info in adapter.linears():
        plan = plans.get(info.name)
        if plan is None:
            continue
        linear = adapter.module(info)
        fit = None
        if plan.method in CALIBRATED_METHODS and fit_layer is not None:
            fit, plan = fit_layer(info, linear, plan)
            plans[info.name] = plan
        elif plan.method in CALIBRATED_METHODS:
            fit = _fit(info, linear, plan, calibration)
        if fit is not None and fit.lora_up is not None and fit.lora_up.shape[1] != plan.rank:
            # A branch cannot have more ranks than the layer's smaller side: the plan (and so the
            # checkpoint, which a load shapes its buffers from) records the rank the fit has.
            plan = plans[info.name] = replace(plan, rank=fit.lora_up.shape[1])
        quantized = QuantLinear.from_linear(
            linear, plan, info.name, sees_video=info.sees_video,
            smooth=fit.smooth if fit else None,
            lora_up=fit.lora_up if fit else None, lora_down=fit.lora_down if fit else None)
        set_submodule(adapter.transformers()[info.component], info.module_name, quantized)
        count += 1
        if on_layer:
            on_layer(info.name, fit)
    attach_state(adapter)
    return count


def attach_state(adapter: Adapter) -> None:
    """Let every QuantLinear see the adapter's forward state (grid, step) for DeltaQuant's cubes, and
    list them for the forward tracker, which hands each its cube before a forward."""
    for component, model in adapter.transformers().items():
        layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
        for layer in layers:
            layer.forward_state = adapter.state
        adapter.quant_layers[component] = layers


def _calibrated_name(info: LinearInfo, calibration: Calibration | None) -> str | None:
    # A fused Q/K/V layer reads what its parts read: an artifact calibrated unfused serves it too.
    return next((n for n in (info.name, part_names(info.name)[0]) if calibration and n in calibration.layers), None)


def check_calibration(calibration: Calibration, layers: list[LinearInfo], plans: dict[str, LayerPlan],
                      where: str) -> None:
    """Before any fit: every layer a calibrated method quantizes has statistics in the artifact, of
    its input width. An artifact of another model would otherwise fail in the middle of fitting (as
    a shape error) or, where names and widths happen to agree, fit the layers to foreign tokens."""
    made_for = calibration.summary.get("model", {})
    origin = f"{where} was calibrated on {made_for.get('name', '?')} ({made_for.get('path') or 'built-in'})"
    wanted = [info for info in layers if info.name in plans and plans[info.name].method in CALIBRATED_METHODS]
    missing = [info.name for info in wanted if _calibrated_name(info, calibration) is None]
    if missing:
        raise DQError(f"{origin} and has no statistics for {len(missing)} of the {len(wanted)} layers this recipe "
                      f"calibrates (e.g. {missing[0]}): run `dq calibrate` with this recipe and model")
    for info in wanted:
        width = calibration.summary["layers"][_calibrated_name(info, calibration)]["in_features"]
        if width != info.in_features:
            raise DQError(f"{origin}: its {info.name} takes {width} input channels, this model's "
                          f"{info.in_features}: run `dq calibrate` with this recipe and model")


def _fit(info: LinearInfo, linear: nn.Linear, plan: LayerPlan, calibration: Calibration | None) -> WeightFit:
    source = _calibrated_name(info, calibration)
    if source is None:
        raise DQError(f"layer {info.name}: method '{plan.method}' needs calibration statistics; run "
                      "`dq calibrate` with the same recipe and pass --calibration")
    cal = calibration.layers[source]
    if cal.tokens.shape[0] == 0:
        raise DQError(f"layer {info.name}: the calibration artifact holds no tokens for it")
    alpha = plan.smoothing["alpha"] if uses_smoothing(plan) else None
    alphas = tuple(plan.smoothing["grid"]) if alpha == "search" else ((alpha,) if alpha is not None else None)
    weight = linear.weight.detach().float()
    return fit_layer(weight, cal.tokens.float().to(weight.device), cal.absmax.amax(dim=0).to(weight.device),
                     fmt=plan.weight, act_fmt=plan.activation, group_size=plan.group_size,
                     rank=plan.rank if uses_low_rank(plan) else 0, alphas=alphas)
