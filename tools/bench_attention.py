"""Time dq's 8-bit attention (`dq_kernels.sage_attention`) against BF16 SDPA — and `sageattention`
1.0.6 when it is importable — at the attention shapes of the video DiTs dq targets, on one CUDA GPU.

    python -P tools/bench_attention.py --out $OUT/attention          # all shapes, default variant
    python -P tools/bench_attention.py --shapes wan480 --variants all --out $OUT/attention-variants

Per shape: the median time (triton.testing.do_bench, CUDA events) of
- sdpa:        F.scaled_dot_product_attention, BF16 (whatever backend torch picks on this GPU)
- sage8:       torch.ops.dq.sage8_attention end to end: K/V statistics, the quantization pre-pass
               and the attention kernel (what dq runs inside a model)
- sage8-attn:  the attention kernel alone on pre-quantized inputs (prep = sage8 - sage8-attn)
- sageattn:    sageattention.sageattn (1.0.6: INT8 QK, FP16 PV, Triton), if installed
with TFLOP/s on 4·B·H·Sq·Sk·D, the speed-up over SDPA, and the relative L2 error against SDPA's
output on two inputs: zero-mean random q, k, v ("randn", the worst case for FP8 P·V: the output is a
sum of independent terms) and random data with a per-channel bias on K and V ("biased", as DiT
activations have). Inputs live in diffusers' memory layout [B, S, H, D] and are passed as
[B, H, S, D] views, as diffusers' dispatch does. Each shape and method is guarded: a failure is
recorded and the run goes on. JSON and markdown are rewritten after every shape.
"""

from __future__ import annotations

import argparse
import sys
import json
import math
import platform
import time
import traceback
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from repo_kernels import import_dq_kernels  # noqa: E402

import_dq_kernels()

SHAPES = {  # name: (batch, heads, tokens, head_dim)
    "wan480": (1, 40, 32760, 128),    # Wan 2.2 A14B, 480p 81 frames: 21×30×52
    "wan720": (1, 40, 75600, 128),    # Wan 2.2 A14B, 720p: 21×45×80
    "ltx": (1, 32, 6144, 64),         # LTX-Video 2B, 768×512 121 frames: 16×16×24
    "cogvideox": (1, 48, 17776, 64),  # CogVideoX-5B, 720×480 49 frames: 17,550 video + 226 text
}
# Where does the 8-bit attention (pre-pass included) start to beat SDPA? Short sequences at both head
# dims: LTX-like (2 CFG branches × 32 heads × 64) and Wan-like (40 × 128). `--shapes sweep` runs these.
SWEEP = {f"d{d}-{s // 1024}k": (b, h, s, d) for b, h, d in ((2, 32, 64), (1, 40, 128))
         for s in (2048, 4096, 8192, 12288, 16384)}
MODEL_SHAPES = tuple(SHAPES)
SHAPES |= SWEEP
VARIANTS = {  # name: kwargs of sage_attention_triton
    "default": dict(pv_acc=0, fast_i2f=True),
    "pv-acc1": dict(pv_acc=1, fast_i2f=True),      # Triton's promotion: ptxas serializes the wgmmas
    "pv-acc2": dict(pv_acc=2, fast_i2f=True),      # acc chained through the FP8 wgmma (imprecise)
    "plain-i2f": dict(pv_acc=0, fast_i2f=False),   # int32→fp32 with cvt instead of the magic add
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


DEVICE = "cuda"  # "cpu" with --dry-run: the Triton interpreter at tiny shapes, to check this script


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def make_inputs(shape, seed: int, bias: float):
    b, h, s, d = shape
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def one(offset):
        x = torch.randn(b, s, h, d, device=DEVICE, generator=g)
        if offset:
            x += offset * torch.randn(d, device=DEVICE, generator=g)
        return x.to(torch.bfloat16).permute(0, 2, 1, 3)  # [B, H, S, D] view of [B, S, H, D] memory

    return one(0.0), one(bias), one(bias)


def bench(fn, ms_hint: float | None = None) -> float:
    import triton

    if DEVICE != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000

    rep = 400 if (ms_hint or 0) < 50 else 1000
    return triton.testing.do_bench(fn, warmup=50, rep=rep, return_mode="median")


def run_shape(name: str, shape, variants: list[str], peer, out: dict, log) -> None:
    from dq_kernels import sage_attention as sa
    from dq_kernels.sage_quant import sage_quantize

    b, h, s, d = shape
    flops = 4.0 * b * h * s * s * d
    entry = out["shapes"].setdefault(name, {"shape": dict(batch=b, heads=h, tokens=s, head_dim=d), "methods": {}})
    methods = entry["methods"]
    scale = 1.0 / math.sqrt(d)

    def record(method: str, fn, errors_of_fn=None, **extra):
        errors = {}
        try:
            t0 = time.perf_counter()
            fn()  # first call: compile and autotune, outside the timing
            sync()
            first = time.perf_counter() - t0
            ms = bench(fn, first * 1000)
            row = dict(ms=ms, tflops=flops / ms / 1e9, first_call_s=first, **extra)
            if "sdpa" in methods and "ms" in methods["sdpa"]:
                row["speedup_vs_sdpa"] = methods["sdpa"]["ms"] / ms
            if errors_of_fn is not None:
                errors = errors_of(errors_of_fn)
            row.update(errors)
            methods[method] = row
            log(f"{name:10s} {method:18s} {ms:9.3f} ms {row['tflops']:7.1f} TFLOP/s"
                + (f"  x{row['speedup_vs_sdpa']:.2f}" if "speedup_vs_sdpa" in row else "")
                + "".join(f"  {k}={v:.4f}" for k, v in errors.items()))
        except Exception as e:  # one method failing must not stop the others
            methods[method] = dict(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=4))
            log(f"{name:10s} {method:18s} FAILED: {type(e).__name__}: {e}")
        finally:
            sync()

    data = {kind: make_inputs(shape, seed=7, bias=bias) for kind, bias in (("randn", 0.0), ("biased", 1.0))}
    sdpa = torch.nn.functional.scaled_dot_product_attention
    refs = {kind: sdpa(*t) for kind, t in data.items()}
    q, k, v = data["randn"]
    record("sdpa", lambda: sdpa(q, k, v))

    def errors_of(fn) -> dict:
        return {f"rel_err_{kind}": rel(fn(*t), refs[kind]) for kind, t in data.items()}

    for variant in variants:
        kw = VARIANTS[variant]
        suffix = "" if variant == "default" else f"[{variant}]"
        if variant == "default":
            record("sage8", lambda: sa.sage_attention(q, k, v, scale), lambda *t: sa.sage_attention(*t, scale))
        else:
            record("sage8" + suffix, lambda kw=kw: sa.sage_attention_triton(q, k, v, scale, **kw),
                   lambda *t, kw=kw: sa.sage_attention_triton(*t, scale, **kw))
        try:
            z = sage_quantize(q, k, v, scale)
            record("sage8-attn" + suffix, lambda kw=kw: sa.sage_attention_triton(q, k, v, scale, quantized=z, **kw),
                   config=_best_config(sa))
            del z
        except Exception as e:
            methods["sage8-attn" + suffix] = dict(error=f"{type(e).__name__}: {e}")
    if peer is not None:
        def peer_fn(q, k, v):  # sageattention takes diffusers' own [B, S, H, D] memory as "NHD"
            t = (x.transpose(1, 2) for x in (q, k, v))
            return peer(*t, tensor_layout="NHD", is_causal=False, sm_scale=scale).transpose(1, 2)

        record("sageattn", lambda: peer_fn(q, k, v), peer_fn)
    del data, refs, q, k, v


def _best_config(sa) -> dict | None:
    tuner = getattr(sa, "_sage8_attn_fwd_tuned", None)
    best = getattr(tuner, "best_config", None)
    if best is None:
        return None
    timings = getattr(tuner, "configs_timings", None) or {}
    return dict(best.kwargs, num_warps=best.num_warps, num_stages=best.num_stages, maxnreg=best.maxnreg,
                tried={f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']} w{c.num_warps} s{c.num_stages} r{c.maxnreg}":
                       t[0] if isinstance(t, (list, tuple)) else t for c, t in timings.items()})


def markdown(doc: dict) -> str:
    lines = ["| shape | B×H×S×D | method | ms (median) | TFLOP/s | × SDPA | rel. err randn | rel. err biased |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in doc["shapes"].items():
        if "shape" not in e:
            lines.append(f"| {name} | | failed: {e.get('error', '?')[:80]} | | | | | |")
            continue
        s = e["shape"]
        dims = f"{s['batch']}×{s['heads']}×{s['tokens']}×{s['head_dim']}"
        for method, r in e.get("methods", {}).items():
            if "error" in r:
                lines.append(f"| {name} | {dims} | {method} | failed: {r['error'][:80]} | | | | |")
                continue
            f = lambda key, fmt: fmt.format(r[key]) if key in r else "—"  # noqa: E731
            lines.append(f"| {name} | {dims} | {method} | {r['ms']:.3f} | {r['tflops']:.0f} | "
                         f"{f('speedup_vs_sdpa', '{:.2f}')} | {f('rel_err_randn', '{:.4f}')} | "
                         f"{f('rel_err_biased', '{:.4f}')} |")
    env = doc["environment"]
    lines += ["", f"{env.get('gpu')}; torch {env['torch']}, triton {env.get('triton')}, "
                  f"sageattention {env.get('sageattention') or 'not installed'}. Median of "
                  "triton.testing.do_bench; rel. err = ‖out − SDPA‖/‖SDPA‖ (BF16 SDPA output as reference)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for attention.json and attention.md")
    parser.add_argument("--shapes", default=",".join(MODEL_SHAPES),
                        help=f"comma-separated, from {', '.join(SHAPES)}; 'sweep' for the d64-*/d128-* ones")
    parser.add_argument("--variants", default="default",
                        help=f"comma-separated kernel variants, or 'all' ({', '.join(VARIANTS)})")
    parser.add_argument("--no-peer", action="store_true", help="skip sageattention even if installed")
    parser.add_argument("--dry-run", action="store_true", help="check this script on the CPU: run with "
                        "TRITON_INTERPRET=1, tiny shapes, one timed call each")
    args = parser.parse_args()
    if args.dry_run:
        global DEVICE
        DEVICE = "cpu"
        for name, (b, h, s, d) in list(SHAPES.items()):
            SHAPES[name] = (b, 2, 150 + d, d)
    elif not torch.cuda.is_available():
        raise SystemExit("bench_attention: needs a CUDA GPU (the CPU runs the reference; see tests/test_attention.py)")
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    shapes = [n for s in shapes for n in (SWEEP if s == "sweep" else [s])]
    variants = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    for name in shapes:
        if name not in SHAPES:
            raise SystemExit(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}")
    for name in variants:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)

    import triton

    peer, peer_version = None, None
    if not args.no_peer:
        try:
            import importlib.metadata

            from sageattention import sageattn as peer
            peer_version = importlib.metadata.version("sageattention")
        except Exception:
            peer = None
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (--dry-run, Triton interpreter)"
    doc = {"environment": {"gpu": gpu, "torch": torch.__version__,
                           "cuda": torch.version.cuda, "triton": triton.__version__,
                           "sageattention": peer_version, "python": platform.python_version()},
           "shapes": {}}
    log_lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        log_lines.append(line)

    def save() -> None:
        (args.out / "attention.json").write_text(json.dumps(doc, indent=1))
        (args.out / "attention.md").write_text(markdown(doc))
        (args.out / "attention.log").write_text("\n".join(log_lines) + "\n")

    for name in shapes:
        try:
            run_shape(name, SHAPES[name], variants, peer, doc, log)
        except Exception as e:  # e.g. out of memory building the inputs
            doc["shapes"].setdefault(name, {})["error"] = f"{type(e).__name__}: {e}"
            log(f"{name}: FAILED {type(e).__name__}: {e}")
        sync()
        save()
    print()
    print(markdown(doc))


if __name__ == "__main__":
    main()
