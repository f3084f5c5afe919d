"""What each `dq bench e2e` configuration does to a workload: the configurations themselves (dq's
recipes per model family, torchao's), and applying one to a model in place.

dq's configurations apply dq's recipes to the (random) weights with data-free fits: smoothing λ = 1
and the low-rank branch from a randomized SVD of each weight, which cost at inference what calibrated
ones cost; 6Bit gets a synthetic predictor. A configuration that cannot run here raises Skip.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from dq_cli.errors import DQError

if TYPE_CHECKING:
    from dq_cli.bench_e2e import Workload

# ---- configurations -----------------------------------------------------------------------------------
DQ_RECIPES = {  # family -> recipe, per dq configuration (a recipe's `quantization` applies by role to any model)
    "w4a4": {"ltx": "ltx_w4a4.yaml", "cogvideox": "cogvideox_w4a4.yaml", "*": "wan22_w4a4.yaml"},
    "w4a4-recipe": {"ltx": "ltx_w4a4.yaml", "cogvideox": "cogvideox_w4a4.yaml", "*": "wan22_w4a4.yaml"},
    "6bit": {"cogvideox": "cogvideox_6bit.yaml", "*": "wan22_6bit.yaml"},
    "w8a8": {"cogvideox": "cogvideox_w8a8.yaml", "*": "wan22_w8a8.yaml"},
}
CONFIGS = {
    "bf16": "unquantized, in the model's dtype (bfloat16 on a GPU)",
    "w4a4": "dq DeltaQuant W4A4 in the Hopper kernel format: the recipe's layers with INT4 weights and "
            "activations in int4_row (one scale per output channel / token), FP8 core tokens (dq::w4a4_linear "
            "on CUDA)",
    "w4a4-recipe": "dq DeltaQuant W4A4 exactly as the recipe says: for the built-in Wan and LTX recipes the same as "
                   "w4a4; the CogVideoX one (NVFP4 deltas) or your own (--recipe w4a4-recipe=FILE) may take "
                   "formats no Hopper kernel runs, and then the PyTorch reference path",
    "6bit": "dq 6Bit-Diffusion: NVFP4 weights, per-step NVFP4/INT8 activation routing and the Temporal Delta "
            "Cache (no NVFP4 tensor cores on Hopper: on CUDA the reference math on exact BF16 carriers, one Triton "
            "BF16 GEMM per layer with the scales in its epilogue; 16-bit speed at best, 4-bit weights at rest; TDC "
            "caches each block's residual per CFG branch)",
    "w8a8": "dq W8A8 SmoothQuant (the wan22_w8a8 / cogvideox_w8a8 recipes' layers): INT8 weights per channel, INT8 activations per "
            "token after smoothing (dq::w8a8_linear on CUDA)",
    "torchao-fp8": "torchao Float8DynamicActivationFloat8WeightConfig, rowwise scales",
    "torchao-int8": "torchao Int8DynamicActivationInt8WeightConfig",
}
DEFAULT_CONFIGS = ("bf16", "w4a4", "6bit", "w8a8", "torchao-fp8", "torchao-int8")
BLOCK_ROLES = ("self_attn.qkv", "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.out", "cross_attn.q", "cross_attn.k",
               "cross_attn.v", "cross_attn.out", "ffn.up", "ffn.down")


class Skip(Exception):
    """A row that cannot run here (a missing optional package, a device without the instructions)."""


# ---- applying a configuration ---------------------------------------------------------------------------
def recipe_for(config: str, family: str, overrides: dict[str, str]) -> str:
    if config in overrides:
        return overrides[config]
    table = DQ_RECIPES[config]
    return table.get(family, table["*"])


def apply_config(workload: Workload, config: str, recipe_overrides: dict[str, str] | None = None) -> list[str]:
    """Quantize the workload's model in place; returns notes on what was done. Raises Skip."""
    if config == "bf16":
        return []
    if config.startswith("torchao-"):
        return _apply_torchao(workload, config)
    family = workload.adapter.family
    return _apply_dq(workload, config, recipe_for(config, "wan" if family == "dq-tiny" else family,
                                                  recipe_overrides or {}))


def kernel_format(plan):
    """The Hopper kernel's INT4 format for a plan's 4-bit weights and activations (int4_pow2 stays).
    Weight-only layers keep theirs: dq::w4a16_linear runs every INT4 layout."""
    if plan.activation == "none":
        return plan
    fmt = {"int4": "int4_row", "nvfp4": "int4_row"}
    return replace(plan, weight=fmt.get(plan.weight, plan.weight), activation=fmt.get(plan.activation, plan.activation))


def data_free_fit(info, linear: nn.Linear, plan):
    """What calibration would give SmoothQuant/SVDQuant/DeltaQuant, without data: smoothing λ = 1 and
    the low-rank branch from a randomized SVD of the weight (no refinement). Costs at inference what a
    calibrated fit costs. Returns (WeightFit, plan with the rank used): `quantize_model`'s `fit_layer`."""
    from dq_calib.weights import WeightFit, low_rank
    from dq_cli.quant.linear import uses_low_rank, uses_smoothing

    w = linear.weight.detach().float()
    smooth = torch.ones(w.shape[1], device=w.device) if uses_smoothing(plan) else None
    up = down = None
    if uses_low_rank(plan):
        rank = min(plan.rank, max(1, min(w.shape) // 4))
        plan = replace(plan, rank=rank)
        up, down, _ = low_rank(w, rank, plan.weight, plan.group_size, iters=0)
    return WeightFit(smooth, up, down, alpha=None, error=math.nan), plan


def _apply_dq(workload: Workload, config: str, recipe_name: str) -> list[str]:
    from dq_cli import recipe as recipes
    from dq_cli.quant.apply import quantize_model
    from dq_cli.quant.plan import CALIBRATED_METHODS, plan_layers

    adapter = workload.adapter
    source, text = recipes.resolve(recipe_name)
    recipe = recipes.parse(text, source)
    if recipe.quantization.fuse_qkv:
        adapter.fuse_qkv()
    layers = adapter.linears()
    plans = plan_layers(recipe.quantization, layers, source,
                        hadamard=recipe.predictor.hadamard_block if recipe.predictor else 0)
    if config == "w4a4":
        plans = {n: kernel_format(p) for n, p in plans.items()}
    quantize_model(adapter, plans, fit_layer=data_free_fit)
    fitted = sum(p.method in CALIBRATED_METHODS for p in plans.values())
    formats = sorted({f"{p.method} W {p.weight} / A {p.activation}" for p in plans.values()})
    notes = [f"{len(plans)} of {len(layers)} linears quantized by {source.removeprefix('builtin:')} "
             f"({'; '.join(formats)})"]
    if fitted:
        notes.append(f"{fitted} layers fitted data-free (λ = 1, low-rank from a randomized SVD of the weight)")
    if recipe.predictor is not None or recipe.tdc.enabled:
        notes += _install_6bit(adapter, recipe, plans, workload.random_weights)
    return notes


def synthetic_predictor(recipe, plans: dict, in_features: dict[str, int]):
    """A 6Bit predictor without calibration data: α = 0 and a per-layer β that puts layers (weighted by
    input features) on the safe INT8 route in the share that meets the recipe's target bits; kind
    'dynamic', so the first step (no Γ yet) takes INT8 as fitted dynamic routing does."""
    from dq_calib.predictor import ROUTE_BITS, SAFE_ROUTE, LayerPredictor, Predictor

    spec = recipe.predictor
    low = next((r for r in spec.routes if r != SAFE_ROUTE), "nvfp4")
    target = spec.target_bits if spec.target_bits is not None else 6.0
    share = min(1.0, max(0.0, (target - ROUTE_BITS[low]) / (ROUTE_BITS[SAFE_ROUTE] - ROUTE_BITS[low])))
    layers, seen, safe = {}, 0.0, 0.0
    for name in sorted(plans):
        if not re.search(r"(blocks|transformer_blocks)\.\d+\.", name):
            continue
        k = in_features[name]
        to_safe = safe + k / 2 <= share * (seen + k)
        seen += k
        safe += k if to_safe else 0
        layers[name] = LayerPredictor(block=name, alpha=0.0, beta=1.0 if to_safe else 0.0, r2=float("nan"),
                                      resid_std=float("nan"), n=0, in_features=k)
    return Predictor(layers=layers, threshold=0.5, low_route=low, safe_route=SAFE_ROUTE, kind="dynamic",
                     target_bits=target, achieved={"safe_share": safe / seen if seen else 0.0})


def _install_6bit(adapter, recipe, plans: dict, random_weights: bool) -> list[str]:
    from dq_cli.quant.runtime import install
    from dq_cli.quant.tdc import TDCConfig

    notes = []
    predictor = None
    if recipe.predictor is not None:
        in_features = {info.name: info.in_features for info in adapter.linears()}
        predictor = synthetic_predictor(recipe, plans, in_features)
        notes.append(f"synthetic 6Bit predictor (not fitted on data): {len(predictor.layers)} layers, "
                     f"{100 * predictor.achieved['safe_share']:.0f}% of input features on INT8 after the first "
                     f"step, for {predictor.target_bits:g} bits")
    tdc = None
    if recipe.tdc.enabled:
        refresh = recipe.predictor.refresh_ratio if recipe.predictor else None
        tdc = TDCConfig(recipe.tdc.tau, recipe.tdc.max_skips, refresh)
        notes.append(f"TDC on (τ {recipe.tdc.tau:g}, at most {recipe.tdc.max_skips} skips in a row)"
                     + (": its skips on random weights say nothing of a trained model's" if random_weights else ""))
    adapter.runtime = install(adapter, predictor, tdc)
    return notes


def _apply_torchao(workload: Workload, config: str) -> list[str]:
    try:
        from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig,
                                          Int8DynamicActivationInt8WeightConfig, PerRow, quantize_)
    except Exception as e:  # noqa: BLE001 - any import failure makes the row a skipped one
        raise Skip(f"torchao is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    device = workload.device
    fp8 = config == "torchao-fp8"
    if fp8:
        if device.type != "cuda":
            raise Skip("torchao FP8 needs a CUDA GPU with FP8 tensor cores (sm_89 or newer)")
        if torch.cuda.get_device_capability(device) < (8, 9):
            raise Skip(f"torchao FP8 needs sm_89 or newer; this GPU is sm_{''.join(map(str, torch.cuda.get_device_capability(device)))}")
        qconfig = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    elif config == "torchao-int8":
        qconfig = Int8DynamicActivationInt8WeightConfig()
    else:
        raise DQError(f"--configs {config}: unknown torchao configuration")
    adapter = workload.adapter
    wanted = {info.name for info in adapter.linears() if info.role in BLOCK_ROLES}
    done = []
    for component, model in adapter.transformers().items():
        def keep(module, fqn, component=component):
            ok = isinstance(module, nn.Linear) and f"{component}.{fqn}" in wanted
            if ok and fp8:  # FP8 GEMMs need both dimensions in multiples of 16
                ok = module.in_features % 16 == 0 and module.out_features % 16 == 0
            if ok:
                done.append(fqn)
            return ok

        quantize_(model, qconfig, filter_fn=keep)
    if not done:
        raise Skip(f"{config}: no linear layer torchao can take (FP8 needs dimensions in multiples of 16)")
    return [f"torchao {type(qconfig).__name__} on {len(done)} block linears (the layers dq quantizes)"]
