"""Compare quantization methods on dq-tiny (the methods issue's table): one calibration, one
checkpoint per variant, then `dq bench --quality` over them all.

    .venv/bin/python -P tools/compare_methods.py --out out/compare [--prompts 16 --steps 20]

Variants: W8A8, FP8, RTN / SmoothQuant / SVDQuant / DeltaQuant W4A4 (INT4 g64 and NVFP4),
DeltaQuant cube-size and core-precision ablations, and scale-granularity ablations (free group
scales, power-of-two group scales are not a recipe option yet, per-token only via INT8).
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path

import yaml

BASE = yaml.safe_load(Path(__file__).resolve().parent.parent.joinpath("recipes", "tiny_deltaquant.yaml").read_text())
KV8 = [{"role": "cross_attn.k", "method": "rtn", "weight": "int8", "activation": "int8"},
       {"role": "cross_attn.v", "method": "rtn", "weight": "int8", "activation": "int8"}]


def variant(**default) -> dict:
    recipe = copy.deepcopy(BASE)
    recipe["quantization"]["default"] = default
    recipe["quantization"]["layers"] = KV8
    return recipe


DQ = dict(method="deltaquant", weight="int4", activation="int4", group_size=64, rank=32)
VARIANTS = {
    "w8a8": variant(method="rtn", weight="int8", activation="int8"),
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
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("out/compare"))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run")
    args = ap.parse_args()
    dq = str(Path(sys.executable).with_name("dq"))
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(VARIANTS)
    base = args.out / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    calib = args.out / "calib"
    if not calib.with_suffix(".json").exists():
        subprocess.run([dq, "calibrate", "-r", str(base), "-o", str(calib), "-q"], check=True)
    checkpoints = []
    for name in names:
        recipe = args.out / f"{name}.yaml"
        recipe.write_text(yaml.safe_dump(VARIANTS[name]))
        ckpt = args.out / f"{name}.safetensors"
        if not ckpt.exists():
            subprocess.run([dq, "quantize", "-r", str(recipe), "-c", str(calib), "-o", str(ckpt), "-q"], check=True)
        checkpoints += ["-c", str(ckpt)]
    subprocess.run([dq, "bench", "--quality", *checkpoints, "-n", str(args.prompts), "--steps", str(args.steps),
                    "-o", str(args.out / "quality")], check=True)


if __name__ == "__main__":
    main()
