"""From a recipe's `quantization` section and a model's linear layers to one resolved setting per
layer. Every pattern must match a layer of the model: a typo would otherwise silently leave
layers unquantized."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, replace

from dq_cli.errors import NotReadyError, RecipeError
from dq_cli.models.base import LinearInfo
from dq_cli.recipe import LayerQuant, QuantizationSpec

# Methods whose math exists; the others are refused with a clear message until they do.
READY_METHODS = {"none", "rtn", "smoothquant", "svdquant", "deltaquant"}
# Methods that learn from calibration data (smoothing needs activation ranges).
CALIBRATED_METHODS = {"smoothquant", "svdquant", "deltaquant"}
DEFAULT_RANK = 32  # SVDQuant's default; DeltaQuant used 128 on Wan 2.2 and 64 on LTX


@dataclass(frozen=True)
class LayerPlan:
    method: str
    weight: str
    activation: str
    group_size: int
    rank: int
    smoothing: dict | None
    cubes: tuple | None
    core: str
    hadamard: int = 0  # block size of the online Hadamard rotation before rounding (0 = none)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "LayerPlan":
        cubes = tuple((float(u), tuple(s)) for u, s in data["cubes"]) if data.get("cubes") else None
        return cls(**{**data, "cubes": cubes})

    @property
    def is_passthrough(self) -> bool:
        return self.method == "none" or (self.weight == "bf16" and self.activation == "none")


def _merge(base: LayerQuant, override: LayerQuant) -> LayerQuant:
    fields = {k: v for k, v in override.model_dump(exclude_none=True).items() if k in LayerQuant.model_fields}
    return base.model_copy(update={k: getattr(override, k) for k in fields})


def _resolve(q: LayerQuant) -> LayerPlan:
    cubes = tuple((c.until, tuple(c.size)) for c in q.cubes) if q.cubes else None
    smoothing = q.smoothing.model_dump(mode="json") if q.smoothing else None
    method = q.method or "rtn"
    rank = q.rank if q.rank is not None else (DEFAULT_RANK if method in ("svdquant", "deltaquant") else 0)
    if method in CALIBRATED_METHODS and smoothing is None:
        smoothing = {"alpha": "search", "grid": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}
    return LayerPlan(method=method, weight=q.weight or "bf16", activation=q.activation or "none",
                     group_size=q.group_size or 64, rank=rank if method in ("svdquant", "deltaquant") else 0,
                     smoothing=smoothing if method in CALIBRATED_METHODS else None, cubes=cubes,
                     core=q.core or "fp8")


def _matches(rule, info: LinearInfo) -> bool:
    if rule.pattern is not None:
        return fnmatch.fnmatchcase(info.name, rule.pattern) or fnmatch.fnmatchcase(info.module_name, rule.pattern)
    return info.role == rule.role


def _selected(role: str, roles) -> bool:
    """A fused Q/K/V layer (`quantization.fuse_qkv`) is selected by its own role or by any of its parts'."""
    return role in roles or (role == "self_attn.qkv" and any(r in roles for r in ("self_attn.q", "self_attn.k", "self_attn.v")))


def plan_layers(spec: QuantizationSpec, layers: list[LinearInfo], source: str, hadamard: int = 0
                ) -> dict[str, LayerPlan]:
    """Resolved plan for every layer to quantize (layers left out stay in the model's dtype).
    `hadamard` (a recipe's predictor.hadamard_block): rotate every layer with quantized activations."""
    example = layers[0].name if layers else "(the model has no linear layers)"
    for i, pattern in enumerate(spec.keep_bf16):
        if not any(_matches(_Glob(pattern), info) for info in layers):
            raise RecipeError(source, f"quantization.keep_bf16[{i}]",
                              f"'{pattern}' matches no layer of the model (names look like '{example}')")
    for i, rule in enumerate(spec.layers):
        if not any(_matches(rule, info) for info in layers):
            key = f"quantization.layers[{i}].{'pattern' if rule.pattern else 'role'}"
            raise RecipeError(source, key, f"'{rule.pattern or rule.role}' matches no layer of the model "
                                           f"(names look like '{example}')")
    plans = {}
    for info in layers:
        if any(_matches(_Glob(p), info) for p in spec.keep_bf16):
            continue
        setting, selected = spec.default, _selected(info.role, spec.roles)
        for rule in spec.layers:  # later rules refine earlier ones
            if _matches(rule, info):
                setting, selected = _merge(setting, rule), True
        plan = _resolve(setting)
        if hadamard and plan.activation != "none":
            plan = replace(plan, hadamard=hadamard)
        if selected and not plan.is_passthrough:
            plans[info.name] = plan
    _check_ready(spec, plans, source)
    return plans


def _check_ready(spec: QuantizationSpec, plans: dict[str, LayerPlan], source: str) -> None:
    for name, plan in plans.items():
        if plan.method not in READY_METHODS:
            raise NotReadyError(f"{source}: quantization method '{plan.method}' (layer {name}) is not "
                                f"implemented yet; available now: {', '.join(sorted(READY_METHODS))}")


@dataclass(frozen=True)
class _Glob:
    pattern: str
    role: None = None
