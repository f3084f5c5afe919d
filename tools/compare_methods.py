"""Compare quantization methods on dq-tiny (the methods issue's table): one calibration, one
checkpoint per variant, then `dq bench --quality` over them all.

    .venv/bin/python -P tools/compare_methods.py --out out/compare [--prompts 16 --steps 20]

Variants: W8A8, FP8, RTN / SmoothQuant / SVDQuant / DeltaQuant W4A4 (INT4 g64 and NVFP4),
DeltaQuant cube-size and core-precision ablations, and scale-granularity ablations: free bf16
group scales (int4, g64), power-of-two group scales (int4_pow2: what the Hopper kernel runs
exactly on FP8 tensor cores) and one scale per token / output channel (int4_row), which the
Hopper kernel also runs exactly, alone or with int4_pow2 weights; and the text tokens' cross-attention
K/V at 4-bit weights with 16-bit activations instead of W8A8.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from dq_cli.quality_bench import markdown

BASE = yaml.safe_load(Path(__file__).resolve().parent.parent.joinpath("recipes", "tiny_deltaquant.yaml").read_text())
KV8 = [{"role": "cross_attn.k", "method": "rtn", "weight": "int8", "activation": "int8"},
       {"role": "cross_attn.v", "method": "rtn", "weight": "int8", "activation": "int8"}]


def kv_weight_only(fmt: str) -> list[dict]:
    """The text tokens' K/V with 4-bit weights and 16-bit activations (dq::w4a16_linear)."""
    return [{"role": role, "method": "rtn", "weight": fmt, "activation": "none"} for role in ("cross_attn.k", "cross_attn.v")]


def variant(layers: list[dict] = KV8, **default) -> dict:
    recipe = copy.deepcopy(BASE)
    recipe["quantization"]["default"] = default
    recipe["quantization"]["layers"] = layers
    return recipe


DQ = dict(method="deltaquant", weight="int4", activation="int4", group_size=64, rank=32)
VARIANTS = {
    "w8a8": variant(method="rtn", weight="int8", activation="int8"),
    "smoothquant_w8a8": variant(method="smoothquant", weight="int8", activation="int8"),
    "fp8": variant(method="rtn", weight="fp8", activation="fp8"),
    "rtn_w4a4": variant(method="rtn", weight="int4", activation="int4", group_size=64),
    "smoothquant_w4a4": variant(method="smoothquant", weight="int4", activation="int4", group_size=64),
    "svdquant_w4a4": variant(method="svdquant", weight="int4", activation="int4", group_size=64, rank=32),
    "deltaquant_w4a4": variant(**DQ),
    "rtn_nvfp4": variant(method="rtn", weight="nvfp4", activation="nvfp4"),
    "svdquant_nvfp4": variant(method="svdquant", weight="nvfp4", activation="nvfp4", rank=32),
    "deltaquant_nvfp4": variant(method="deltaquant", weight="nvfp4", activation="nvfp4", rank=32),
    "dq_cube16": variant(**DQ, cubes=[{"until": 1.0, "size": [4, 1, 4]}]),
    "dq_cube64": variant(**DQ, cubes=[{"until": 1.0, "size": [4, 2, 8]}]),
    "dq_cube256": variant(**DQ, cubes=[{"until": 1.0, "size": [4, 4, 16]}]),
    "dq_core_bf16": variant(**DQ, core="bf16"),
    "dq_core_int4": variant(**DQ, core="int4"),
    "svdquant_pow2": variant(method="svdquant", weight="int4_pow2", activation="int4_pow2", group_size=64, rank=32),
    "dq_pow2": variant(**{**DQ, "weight": "int4_pow2", "activation": "int4_pow2"}),
    "dq_row": variant(**{**DQ, "weight": "int4_row", "activation": "int4_row"}),
    "dq_pow2_w_row_a": variant(**{**DQ, "weight": "int4_pow2", "activation": "int4_row"}),
    # the text K/V at 4 bits, weights only, instead of W8A8 (the checkpoint-size lever)
    "dq_row_kv4_pow2": variant(kv_weight_only("int4_pow2"), **{**DQ, "weight": "int4_row", "activation": "int4_row"}),
    "dq_row_kv4_row": variant(kv_weight_only("int4_row"), **{**DQ, "weight": "int4_row", "activation": "int4_row"}),
    "dq_row_kv4_g64": variant(kv_weight_only("int4"), **{**DQ, "weight": "int4_row", "activation": "int4_row"}),
    # and the time / text embedders outside the blocks at 4-bit weights too (the time embedder's first two
    # linears stay in fp32, as diffusers keeps them): what is left of the checkpoint's BF16 bytes
    "dq_row_kv4_g64_embed4": variant(kv_weight_only("int4") + [
        {"pattern": p, "method": "rtn", "weight": "int4", "activation": "none"}
        for p in ("*condition_embedder.time_proj", "*condition_embedder.text_embedder.*")],
        **{**DQ, "weight": "int4_row", "activation": "int4_row"}),
}
# the same with self-attention Q/K/V fused into one layer (one smoothing vector and one low-rank branch
# for the three; fitted from the unfused calibration's to_q statistics, the layers' shared input)
VARIANTS["dq_row_kv4_g64_fused"] = copy.deepcopy(VARIANTS["dq_row_kv4_g64"])
VARIANTS["dq_row_kv4_g64_fused"]["quantization"]["fuse_qkv"] = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("out/compare"))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--calib-prompts", type=int, default=None, help="override the recipe's calibration prompts")
    ap.add_argument("--calib-steps", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=1, help="variants quantized and benchmarked side by side")
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run")
    ap.add_argument("--attention", default=None, help="also each variant with this self-attention (sage8)")
    args = ap.parse_args()
    dq = [sys.executable, "-P", "-m", "dq_cli"]
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(VARIANTS)
    for recipe in (BASE, *VARIANTS.values()):
        if args.calib_prompts:
            recipe["calibration"]["num_prompts"] = args.calib_prompts
        if args.calib_steps:
            recipe["calibration"]["steps"] = args.calib_steps
    base = args.out / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    calib = args.out / "calib"
    if not calib.with_suffix(".json").exists():
        subprocess.run([*dq, "calibrate", "-r", str(base), "-o", str(calib), "-q"], check=True)

    def quantize(name: str) -> None:
        recipe, ckpt = args.out / f"{name}.yaml", args.out / f"{name}.safetensors"
        recipe.write_text(yaml.safe_dump(VARIANTS[name]))
        if not ckpt.exists():
            subprocess.run([*dq, "quantize", "-r", str(recipe), "-c", str(calib), "-o", str(ckpt), "-q"], check=True)

    def bench(name: str) -> Path:
        out = args.out / "quality" / name
        if not out.with_suffix(".json").exists():
            extra = ["--attention", args.attention] if args.attention else []
            subprocess.run([*dq, "bench", "--quality", "-c", str(args.out / f"{name}.safetensors"), *extra,
                            "-n", str(args.prompts), "--steps", str(args.steps), "-o", str(out), "-q"], check=True)
        return out.with_suffix(".json")

    # One bench per variant (each regenerates the same deterministic baseline videos): they run
    # side by side on a many-core host, and a finished variant is not redone after an interruption.
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(quantize, names))
        reports = list(pool.map(bench, names))
    docs = [json.loads(r.read_text()) for r in reports]
    rows = {}  # by name: the baseline (and its 8-bit attention row) once, then each variant's
    for row in (r for d in docs for r in d["rows"]):
        rows.setdefault(row["config"], row)
    merged = {**docs[0], "rows": list(rows.values()),
              "command": " ".join(sys.argv)}
    (args.out / "quality.json").write_text(json.dumps(merged, indent=1))
    (args.out / "quality.md").write_text(markdown(merged))
    print(markdown(merged))


if __name__ == "__main__":
    main()
