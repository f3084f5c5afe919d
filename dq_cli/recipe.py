"""Recipes: one YAML file drives calibrate, predictor-fit, quantize, generate and bench.

A recipe is parsed into pydantic models (v2). Pydantic rather than dataclasses because a recipe is
user input: it gives typed fields, ranges and unknown-key detection with the exact path of the
offending key for free, which a dataclass loader would have to re-implement. Every error becomes
one `RecipeError` naming the file and the dotted key.
"""

from __future__ import annotations

import difflib
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dq_cli.errors import RecipeError

Method = Literal["none", "rtn", "smoothquant", "svdquant", "deltaquant"]
# int4: bf16 scale per group; int4_pow2: power-of-two group scales (what the Hopper kernel runs
# exactly on FP8 tensor cores); int4_row: one scale per output channel / token.
WeightFormat = Literal["bf16", "int8", "fp8", "int4", "int4_pow2", "int4_row", "nvfp4"]
ActivationFormat = Literal["none", "int8", "fp8", "int4", "int4_pow2", "int4_row", "nvfp4"]
CorePrecision = Literal["bf16", "fp8", "int4"]
Role = Literal[
    "self_attn.qkv", "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.out",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.out",
    "ffn.up", "ffn.down", "embed", "head", "other",
]
BLOCK_ROLES: tuple[str, ...] = (
    "self_attn.qkv", "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.out",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.out",
    "ffn.up", "ffn.down",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    name: str = "dq-tiny"
    path: str | None = None
    family: Literal["dq-tiny", "wan", "wan-i2v", "wan-ti2v", "ltx", "cogvideox"] | None = None
    # auto: bfloat16 on a GPU, float32 on the CPU (where bf16 matmuls are slow and gain nothing).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"


class CalibrationSpec(_Strict):
    prompts: str = "builtin"
    num_prompts: Annotated[int, Field(ge=1, le=100_000)] = 16
    steps: Annotated[int, Field(ge=1, le=1000)] | None = None
    tokens_per_layer: Annotated[int, Field(ge=16, le=1_000_000)] = 2048
    step_ranges: Annotated[int, Field(ge=1, le=100)] = 4
    seed: int = 0


class SamplingSpec(_Strict):
    steps: Annotated[int, Field(ge=1, le=1000)] | None = None
    guidance: Annotated[float, Field(ge=0.0, le=50.0)] | None = None
    frames: Annotated[int, Field(ge=1, le=1024)] | None = None
    height: Annotated[int, Field(ge=8, le=4096)] | None = None
    width: Annotated[int, Field(ge=8, le=4096)] | None = None
    fps: Annotated[int, Field(ge=1, le=240)] = 16
    seed: int = 0
    negative_prompt: str = ""
    # Self-attention backend: diffusers' SDPA, or dq's 8-bit attention (INT8 QK, FP8 PV; a Triton
    # kernel on CUDA, its PyTorch reference on the CPU). Cross-attention always stays on SDPA.
    attention: Literal["sdpa", "sage8"] = "sdpa"


class CubeStage(_Strict):
    """Cube size (t, h, w) in tokens, used for steps whose progress (step / steps) is < `until`."""

    until: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]


class Smoothing(_Strict):
    """SmoothQuant migration strength: a fixed alpha, or a per-layer grid search."""

    alpha: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["search"] = "search"
    grid: tuple[Annotated[float, Field(ge=0.0, le=1.0)], ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


class LayerQuant(_Strict):
    """How one linear layer is quantized. Fields left out inherit from `quantization.default`."""

    method: Method | None = None
    weight: WeightFormat | None = None
    activation: ActivationFormat | None = None
    group_size: Annotated[int, Field(ge=8, le=4096)] | None = None
    rank: Annotated[int, Field(ge=0, le=4096)] | None = None
    smoothing: Smoothing | None = None
    cubes: tuple[CubeStage, ...] | None = None
    core: CorePrecision | None = None


class LayerRule(LayerQuant):
    """An override: layers whose name matches the glob `pattern` (or whose role is `role`)."""

    pattern: str | None = None
    role: Role | None = None

    @model_validator(mode="after")
    def _one_selector(self) -> "LayerRule":
        if (self.pattern is None) == (self.role is None):
            raise ValueError("give exactly one of 'pattern' or 'role'")
        return self


class QuantizationSpec(_Strict):
    default: LayerQuant = LayerQuant(
        method="rtn", weight="int8", activation="none", group_size=64, rank=0,
        smoothing=None, cubes=None, core="fp8",
    )
    roles: tuple[Role, ...] = BLOCK_ROLES
    layers: tuple[LayerRule, ...] = ()
    keep_bf16: tuple[str, ...] = ()
    # Self-attention Q/K/V as one linear layer (role self_attn.qkv): one activation quantization, one
    # GEMM and one low-rank branch for the three (dq_cli/models/fusion.py). Wan and dq-tiny only.
    fuse_qkv: bool = False


class PredictorSpec(_Strict):
    target_bits: Annotated[float, Field(ge=4.0, le=8.0)] | None = 6.0
    error_budget: Annotated[float, Field(gt=0.0)] | None = None
    routes: tuple[Literal["nvfp4", "int8", "deltaquant"], ...] = ("nvfp4", "int8")
    hadamard_block: Annotated[int, Field(ge=0, le=4096)] = 0
    refresh_ratio: Annotated[float, Field(gt=0.0)] | None = None
    # Whether the threshold counts TDC's skips and the INT8 steps they force into the target. With
    # false it is fitted as without TDC and those INT8 steps come on top (more bits, better
    # quality on dq-tiny: README, "Bits per generation, and TDC at a 6-bit budget").
    budget_tdc: bool = True

    @model_validator(mode="after")
    def _power_of_two(self) -> "PredictorSpec":
        b = self.hadamard_block
        if b and (b < 2 or b & (b - 1)):
            raise ValueError(f"hadamard_block must be 0 or a power of two (got {b})")
        return self


class TDCSpec(_Strict):
    enabled: bool = False
    tau: Annotated[float, Field(ge=0.0, le=10.0)] = 0.05
    max_skips: Annotated[int, Field(ge=0, le=100)] = 2


class Recipe(_Strict):
    version: Literal[1] = 1
    name: str = ""
    description: str = ""
    model: ModelSpec = ModelSpec()
    calibration: CalibrationSpec = CalibrationSpec()
    sampling: SamplingSpec = SamplingSpec()
    quantization: QuantizationSpec = QuantizationSpec()
    predictor: PredictorSpec | None = None
    tdc: TDCSpec = TDCSpec()

    @cached_property
    def text(self) -> str:
        """The recipe as YAML, recorded in every artifact it produces."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


BUILTIN_PACKAGE = "dq_recipes"
DEFAULT_RECIPE = "tiny_w4a4.yaml"


def builtin_recipes() -> list[str]:
    return sorted(p.name for p in resources.files(BUILTIN_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def resolve(name_or_path: str) -> tuple[str, str]:
    """Find a recipe: a path that exists wins, then a built-in name (with or without .yaml)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return str(path), path.read_text()
    if path.is_dir():
        raise RecipeError(name_or_path, "", "is a directory, not a recipe file")
    name = name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml"
    builtin = resources.files(BUILTIN_PACKAGE) / name
    if "/" not in name_or_path and builtin.is_file():
        return f"builtin:{name}", builtin.read_text()
    stems = {n.removesuffix(".yaml"): n for n in builtin_recipes()}  # the shared suffix is no likeness
    match = difflib.get_close_matches(name.removesuffix(".yaml"), list(stems), n=1, cutoff=0.5)
    hint = f" — did you mean '{stems[match[0]]}'?" if match else ""
    raise RecipeError(name_or_path, "", "no such file or built-in recipe" + hint
                      + f" (built-in: {', '.join(builtin_recipes())})")


def load(name_or_path: str = DEFAULT_RECIPE, model_path: str | None = None, check: bool = True) -> Recipe:
    """Load and check a recipe; `model_path` (a --model flag) replaces model.path. `check=False`
    leaves the files it names unchecked, for a command that uses neither its model nor its prompts
    (`dq predictor-fit`; `dq generate` with a checkpoint or --model)."""
    source, text = resolve(name_or_path)
    recipe = parse(text, source)
    if model_path is not None:
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"path": model_path})})
    if check:
        if model_path is not None and not Path(model_path).expanduser().is_dir():
            raise RecipeError("--model", "", f"no such folder '{model_path}'{_relative_note(model_path)}")
        check_paths(recipe, source)
    return recipe


def check_paths(recipe: Recipe, source: str) -> None:
    """Files a recipe names must exist before any work starts. Relative paths are taken from the
    current directory, not the recipe's (the built-in recipes' `./Wan2.2-…` folders are where the
    user runs dq)."""
    path = recipe.model.path
    if path is not None and not Path(path).expanduser().is_dir():
        raise RecipeError(source, "model.path", f"no such folder '{path}'{_relative_note(path)}; "
                                                "give the model's folder with --model")
    prompts = recipe.calibration.prompts
    if prompts != "builtin" and not Path(prompts).expanduser().exists():
        raise RecipeError(source, "calibration.prompts",
                          f"no such file or folder '{prompts}'{_relative_note(prompts)}")


def _relative_note(path: str) -> str:
    p = Path(path).expanduser()
    return "" if p.is_absolute() else f" (relative paths are taken from the current directory, {Path.cwd()})"


def parse(text: str, source: str = "<recipe>") -> Recipe:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise RecipeError(source, where, f"not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(source, "", "a recipe is a mapping of keys to values")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise _first_error(e, data, source) from None


def _first_error(e: ValidationError, data: dict, source: str) -> RecipeError:
    err = e.errors()[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-after", "tagged")))]
    key = _dotted(loc)
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = list(parent.model_fields) if parent else []
        hint = _closest(str(loc[-1]), known) or _one_level_down(str(loc[-1]), parent, _dotted(loc[:-1]))
        return RecipeError(source, key, "unknown key" + hint)
    value = err.get("input")
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict) else ""
    return RecipeError(source, key, err["msg"].replace("Value error, ", "") + shown)


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _model_at(loc: list[Any]) -> type[BaseModel] | None:
    """The pydantic model class that sits at a location of the recipe tree."""
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        model = _model_in(field.annotation)
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found:
            return found
    return None


def _one_level_down(word: str, parent: type[BaseModel] | None, at: str) -> str:
    """A key written one level too high (`quantization: {method: ...}`) names where it belongs."""
    homes = []
    for name, field in (parent.model_fields.items() if parent else ()):
        child = _model_in(field.annotation)
        if child is not None and word in child.model_fields:
            homes.append(f"{at}.{name}" if at else name)
    return f" — it belongs under {' or '.join(repr(h) for h in homes)}" if homes else ""


def _closest(word: str, options: list[str]) -> str:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" — did you mean '{match[0]}'?" if match else ""
