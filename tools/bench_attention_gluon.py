"""Check and time the Gluon 8-bit attention kernel (kernels/sage_attention_gluon.py) on one Hopper GPU,
beside the Triton kernel (kernels/sage_attention.py, its autotuned config) and BF16 SDPA.

    python -P tools/bench_attention_gluon.py --out $OUT/gluon            # default sweep (< 4 min, H200)
    python -P tools/bench_attention_gluon.py --out DIR --all-configs     # + the 64x64 and 128x64 tiles
    python -P tools/bench_attention_gluon.py --out DIR --shapes small    # correctness shapes only

Per shape (random BF16 q, k, v in diffusers' [B, S, H, D] memory seen as [B, H, S, D], as
tools/bench_attention.py makes them), quantized once with `sage_quantize`; every kernel gets the same
SageInputs (`quantized=`), so the times are the attention kernel alone, pre-pass excluded:
1. correctness: each Gluon config against `sage_attention_reference(..., block_n=BLOCK_N,
   quantized=z)` — relative Frobenius error, asserted in tests/test_attention.py at 1e-2 (the bar here:
   'ok' or 'WRONG'). At the Wan shapes the reference runs on the first 4 heads only (the kernel's
   output is sliced to match) to keep it to seconds.
2. timing: triton.testing.do_bench(warmup=100, rep=500), median, of each Gluon config, of
   `sage_attention_triton(..., quantized=z)` (autotuned on its first call, outside the timing) and of
   F.scaled_dot_product_attention on the BF16 inputs.
A config that fails (compile error, launch error, wrong result) is reported and the sweep goes on; a
CUDA error that poisons the context (illegal address) stops the run after writing what it has.
Writes DIR/gluon.md (the table) and DIR/gluon.json after every shape.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from repo_kernels import import_dq_kernels  # noqa: E402

import_dq_kernels()
from bench_attention import make_inputs, rel  # noqa: E402  (the attention bench's inputs: diffusers' layout)

SHAPES = {  # name: (batch, heads, tokens, head_dim)
    "small1000": (1, 2, 1000, 128),
    "small777": (1, 2, 777, 128),     # a partial last key tile at every BLOCK_N
    "small-d64": (1, 3, 1297, 64),
    "wan480": (1, 40, 32760, 128),    # Wan 2.2 A14B, 480p
    "wan720": (1, 40, 75600, 128),    # Wan 2.2 A14B, 720p
}
GROUPS = {"small": ["small1000", "small777", "small-d64"], "wan": ["wan480", "wan720"]}
REF_HEADS = 4  # heads the reference runs on at the big shapes
TOL = 1e-2     # relative error vs sage_attention_reference (tests/test_attention.py's bar)
# Chained P·V: the reference adds each tile's P·V to acc in FP32; the chained kernel adds it inside the
# FP8 wgmma, whose accumulator keeps ~13 mantissa bits (truncating) — an error that grows with the
# number of key tiles (256 at Wan 480p, 591 at 720p). Triton's chained mode (PV_ACC=2) measured 0.0479
# vs 0.0477 against SDPA at 480p; against the reference that is ≲ 5e-3. Bar 2e-2 here; the GPU run
# records the actual figure.
TOL_CHAINED = 2e-2


def configs(d: int, all_configs: bool = False) -> list[dict]:
    """The default sweep: the 64x128 / 4-warp tile (fresh accumulator, s2 and s3; chained, with and
    without the 168-register cap that would give three CTAs an SM), 128x128 / 8 warps, and the plain-K
    fallback. all_configs adds the rest of GLUON_CONFIGS (64x64 / 4 warps and 128x64 / 8 warps, which
    lost by 15-30% on the H200) and plain-K 64x64. Then the warp-specialized kernel (timed on the H200
    in the eleventh session: slower than the Triton kernel, docs/performance.md):
    128 x 128 keys chained, s2 / s3, free-running and ping-pong; 128 x 64 keys fresh; 128 x 128 fresh."""
    from dq_kernels.sage_attention_gluon import GLUON_CONFIGS

    base = dict(permuted_k=True, chained=False, maxnreg=None)
    default = {(64, 128, 4, 2), (64, 128, 4, 3), (128, 128, 8, 2)}
    out = [dict(base, block_m=bm, block_n=bn, num_warps=w, num_stages=s) for bm, bn, w, s in GLUON_CONFIGS
           if all_configs or (bm, bn, w, s) in default]
    tile = dict(base, block_m=64, block_n=128, num_warps=4)
    # P·V chained into acc (no separate O tile): 207 registers, and 168 with the cap (spills, see
    # tools/attention_gluon_sass.py --chained --maxnreg 168)
    out += [dict(tile, num_stages=s, chained=True, maxnreg=r) for r in (None, 168) for s in (2, 3)]
    # the same default tile with K in key order (P shuffled into the wgmma operand layout): the fallback
    # if the permuted 5-D TMA box misbehaves, and what the permutation saves
    out += [dict(tile, num_stages=2, permuted_k=False)]
    if all_configs:
        out += [dict(base, block_m=64, block_n=64, num_warps=4, num_stages=2, permuted_k=False)]
    # warp-specialized (_sage8_attn_fwd_gluon_ws): a 1-warp TMA producer, two consumer warpgroups of 64
    # rows, 240 registers each (setmaxnreg). Chained at 64x128 keys: the fresh-accumulator consumer spills
    # at 240 (60 bytes; tools/attention_gluon_sass.py --warp-specialized); fresh fits at BLOCK_N 64.
    ws = dict(base, block_m=128, num_warps=8, warp_specialized=True)
    out += [dict(ws, block_n=128, num_stages=s, chained=True) for s in (2, 3)]
    out += [dict(ws, block_n=128, num_stages=s, chained=True, pingpong=True) for s in (2, 3)]
    out += [dict(ws, block_n=64, num_stages=2), dict(ws, block_n=64, num_stages=2, pingpong=True),
            dict(ws, block_n=128, num_stages=2)]  # the last: spills (60 bytes), for comparison
    return out


def label_of(c: dict) -> str:
    return (f"gluon {c['block_m']}x{c['block_n']} w{c['num_warps']} s{c['num_stages']}"
            + ("" if c["permuted_k"] else " plain-K") + (" chained" if c.get("chained") else "")
            + (f" maxnreg {c['maxnreg']}" if c.get("maxnreg") else "")
            + (" WS" if c.get("warp_specialized") else "") + (" pingpong" if c.get("pingpong") else ""))


def bench(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=100, rep=500, return_mode="median")


def head_slice(z, n: int):
    """The SageInputs of the first n (batch·head) rows (b = 1 here)."""
    from dq_kernels.sage_quant import SageInputs

    return SageInputs(*(t[:n] for t in z[:7]), z.s_q, z.s_k, z.quant_block)


def is_fatal(e: Exception) -> bool:
    text = str(e).lower()
    return any(s in text for s in ("illegal", "misaligned", "unspecified launch failure", "device-side assert",
                                   "an illegal instruction"))


def run_shape(name, shape, doc, log, fatal, all_configs: bool = False) -> None:
    from dq_kernels.sage_attention import sage_attention_reference, sage_attention_triton
    from dq_kernels.sage_attention_gluon import sage_attention_gluon
    from dq_kernels.sage_quant import sage_quantize

    b, h, s, d = shape
    scale = 1.0 / math.sqrt(d)
    entry = doc["shapes"].setdefault(name, {"shape": list(shape), "rows": []})
    rows = entry["rows"]
    q, k, v = make_inputs(shape, seed=0, bias=0.0)
    z = sage_quantize(q, k, v, scale)
    torch.cuda.synchronize()
    big = h * s > 200_000
    nh = min(h, REF_HEADS) if big else h
    z_ref = head_slice(z, nh) if big else z
    refs: dict[int, torch.Tensor] = {}

    def reference(bn: int) -> torch.Tensor:
        if bn not in refs:
            t0 = time.perf_counter()
            refs[bn] = sage_attention_reference(q[:, :nh], k[:, :nh], v[:, :nh], scale, block_n=bn, quantized=z_ref)
            log(f"{name}: reference block_n={bn} on {nh} heads in {time.perf_counter() - t0:.1f} s")
        return refs[bn]

    timed = not name.startswith("small")
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    if timed:
        entry["sdpa_ms"] = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale))
        log(f"{name}: sdpa {entry['sdpa_ms']:.2f} ms")

    def record(label, fn, bn_ref, ms=None, tol=TOL, **extra):
        row = dict(method=label, **extra)
        try:
            out = fn()
            torch.cuda.synchronize()
            row["finite"] = bool(torch.isfinite(out).all())
            if bn_ref:
                row["rel_ref"] = rel(out[:, :nh], reference(bn_ref))
                row["ok"] = row["finite"] and row["rel_ref"] <= tol
            row["rel_sdpa"] = rel(out, sdpa)
            if timed:
                row["ms"] = bench(fn) if ms is None else ms
                row["x_sdpa"] = entry["sdpa_ms"] / row["ms"]
        except Exception as e:  # one config failing must not stop the sweep
            row["error"] = f"{type(e).__name__}: {e}"[-400:]
            log(traceback.format_exc(limit=3))
            if is_fatal(e):
                fatal.append(row["error"])
        rows.append(row)
        log(f"{name}: {json.dumps(row)}")

    # (timed above; `fn` returns the output computed once — timing it would time nothing)
    record("sdpa-bf16", lambda: sdpa, None, ms=entry.get("sdpa_ms"))
    if d in (32, 64, 128):
        record("triton (autotuned)", lambda: sage_attention_triton(q, k, v, scale, quantized=z), None)
    for c in configs(d, all_configs):
        if fatal:
            break
        record(label_of(c), lambda c=c: sage_attention_gluon(q, k, v, scale, quantized=z, **c), c["block_n"],
               tol=TOL_CHAINED if c["chained"] else TOL, config=c)
    del q, k, v, z, z_ref, refs, sdpa
    torch.cuda.empty_cache()


def markdown(doc) -> str:
    lines = [f"GPU {doc['gpu']}, torch {doc['torch']}, triton {doc['triton']}. Kernel alone (pre-pass excluded); "
             f"rel. error = ‖out − ref‖/‖ref‖ vs sage_attention_reference at the same BLOCK_N (bar {TOL}; "
             f"chained {TOL_CHAINED}).", "",
             "| shape | method | ms | × SDPA | rel. err vs ref | ok | rel. err vs SDPA |",
             "|---|---|---|---|---|---|---|"]
    for name, e in doc["shapes"].items():
        for r in e.get("rows", []):
            if "error" in r:
                lines.append(f"| {name} | {r['method']} | FAILED: {r['error'][:150].replace('|', '/')} | | | | |")
                continue
            ms = f"{r['ms']:.2f}" if "ms" in r else ""
            x = f"{r['x_sdpa']:.3f}" if "x_sdpa" in r else ""
            rr = f"{r['rel_ref']:.2e}" if "rel_ref" in r else ""
            ok = ("ok" if r["ok"] else "WRONG") if "ok" in r else ""
            lines.append(f"| {name} | {r['method']} | {ms} | {x} | {rr} | {ok} | {r['rel_sdpa']:.2e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--shapes", nargs="+", default=GROUPS["small"] + GROUPS["wan"],
                   help=f"names ({', '.join(SHAPES)}) or groups ({', '.join(GROUPS)})")
    p.add_argument("--all-configs", action="store_true", help="also the 64x64 / 4-warp and 128x64 / 8-warp tiles "
                   "(slower on the H200; left out of the default sweep)")
    args = p.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        raise SystemExit("bench_attention_gluon: needs an sm_90 (Hopper) GPU")
    names = [n for s in args.shapes for n in GROUPS.get(s, [s])]
    for n in names:
        if n not in SHAPES:
            raise SystemExit(f"unknown shape {n!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    import triton

    doc = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "shapes": {}}
    fatal: list[str] = []
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    def save():
        (args.out / "gluon.json").write_text(json.dumps(doc, indent=1))
        (args.out / "gluon.md").write_text(markdown(doc))

    for n in names:
        if fatal:
            log(f"stopping: a CUDA error left the context unusable ({fatal[0][:200]})")
            break
        try:
            run_shape(n, SHAPES[n], doc, log, fatal, args.all_configs)
        except Exception as e:  # e.g. out of memory building the inputs
            doc["shapes"].setdefault(n, {})["error"] = f"{type(e).__name__}: {e}"
            log(f"{n}: FAILED {type(e).__name__}: {e}")
            if is_fatal(e):
                fatal.append(str(e))
        save()
    save()
    print()
    print(markdown(doc))


if __name__ == "__main__":
    main()
