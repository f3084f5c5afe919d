"""Time the 8-bit attention kernel alone, one tile config at a time, on one CUDA GPU: what the
autotuner chooses between, and configs outside its list (a register cap, fewer stages), so that a
change to AUTOTUNE_CONFIGS rests on numbers. Inputs as tools/bench_attention.py makes them (random
BF16 in diffusers' [B, S, H, D] memory), quantized once; BF16 SDPA timed in the same run.

    python -P tools/attention_configs.py --shapes wan480 wan720 --out $OUT/attention_configs

Why a register cap: a 64-row tile at 4 warps takes 183 registers a thread, so two CTAs fit an SM's
65,536 registers; at 168 (no spill, `tools/attention_sass.py`) and 2 stages (73 KB of shared memory)
three do — three independent warpgroups an SM whose softmax and MMAs can interleave.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from bench_attention import SHAPES, VARIANTS, bench, make_inputs, rel  # noqa: E402

# (BLOCK_M, BLOCK_N, num_warps, num_stages, maxnreg)
CONFIGS = [
    (128, 128, 8, 2, None), (128, 128, 8, 3, None), (128, 128, 8, 4, None), (128, 64, 8, 3, None),
    (128, 64, 8, 4, None), (64, 128, 4, 3, None), (64, 64, 4, 3, None), (64, 64, 4, 4, None),
    (64, 128, 4, 2, None), (64, 128, 4, 2, 168), (64, 64, 4, 2, None), (64, 128, 4, 3, 168),
    (64, 128, 4, 2, 128),  # four CTAs an SM where the head dim allows (D = 64: 127 registers, no spill)
]


def as_config(bm, bn, w, s, nreg) -> dict:
    c = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
    if nreg:
        c["maxnreg"] = nreg
    return c


def main() -> None:
    from dq_kernels.sage_attention import sage_attention_triton
    from dq_kernels.sage_quant import sage_quantize

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["wan480"], choices=list(SHAPES))
    p.add_argument("--variants", nargs="+", default=["default"], choices=list(VARIANTS),
                   help="kernel variants (tools/bench_attention.py's), each timed at every config")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}}
    import triton
    doc["triton"] = triton.__version__
    for name in args.shapes:
        b, h, s, d = SHAPES[name]
        flops = 4.0 * b * h * s * s * d
        q, k, v = make_inputs(SHAPES[name], seed=0, bias=0.0)
        scale = 1.0 / math.sqrt(d)
        sdpa_ms = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale))
        z = sage_quantize(q, k, v, scale)
        rows, first = [], None
        for variant, cfg in [(v, c) for v in args.variants for c in CONFIGS]:
            c, kw = as_config(*cfg), VARIANTS[variant]
            try:
                out = sage_attention_triton(q, k, v, scale, config=c, quantized=z, **kw)
                torch.cuda.synchronize()
                first = out if first is None else first
                ms = bench(lambda: sage_attention_triton(q, k, v, scale, config=c, quantized=z, **kw))
                row = dict(variant=variant, config=c, ms=ms, tflops=flops / ms / 1e9, x_sdpa=sdpa_ms / ms,
                           rel_vs_first=rel(out, first))
            except Exception as e:  # one config failing (shared memory, registers) must not stop the sweep
                row = dict(variant=variant, config=c, error=f"{type(e).__name__}: {e}"[:300])
            rows.append(row)
            print(name, json.dumps(row), flush=True)
        doc["shapes"][name] = dict(sdpa_ms=sdpa_ms, configs=rows)
        (args.out / "attention_configs.json").write_text(json.dumps(doc, indent=1))
        del q, k, v, z, first
        torch.cuda.empty_cache()
    lines = ["| shape | variant | BLOCK_M×N | warps | stages | maxnreg | ms | TFLOP/s | × SDPA |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, e in doc["shapes"].items():
        for r in e["configs"]:
            c = r["config"]
            tail = (f"{r['ms']:.2f} | {r['tflops']:.0f} | {r['x_sdpa']:.3f}" if "ms" in r else f"{r['error'][:60]} | | ")
            lines.append(f"| {name} (SDPA {e['sdpa_ms']:.2f} ms) | {r['variant']} | {c['BLOCK_M']}×{c['BLOCK_N']} | "
                         f"{c['num_warps']} | "
                         f"{c['num_stages']} | {c.get('maxnreg', '')} | {tail} |")
    (args.out / "attention_configs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
