"""Compile the Gluon 8-bit attention kernel (kernels/sage_attention_gluon.py) for Hopper (sm_90a)
without a GPU and report, per tile config: registers, spill bytes (ptxas -v), stack, shared memory,
and the SASS counts that show the pipelining — IGMMA (INT8 QKᵀ), QGMMA (FP8 P·V), WARPGROUP.DEPBAR
(wgmma waits), MUFU.EX2, BAR.SYNC (CTA-wide or named/warpgroup-local), USETMAXREG (setmaxnreg of a
warp-specialized kernel) — plus the shared-memory traffic outside the tensor cores (STS/LDS: a P that
went through shared memory would show here), whether ptxas serialized the wgmmas (note C7514), and
`ex2||`: per pipelined step, the MUFU.EX2 that sit between the wait for the scores and the wait for
the P·V wgmma, i.e. the softmax that overlaps the tensor cores (BLOCK_M·BLOCK_N/128 is all of it).

    python -P tools/attention_gluon_sass.py                   # GLUON_CONFIGS, D = 128 and 64
    python -P tools/attention_gluon_sass.py --head-dims 128 --configs 64x128x4x2
    python -P tools/attention_gluon_sass.py --dump /tmp/gsass # also write TTGIR, PTX and SASS
    python -P tools/attention_gluon_sass.py --plain-k         # K in key order (P shuffled into place)
    python -P tools/attention_gluon_sass.py --chained --maxnreg 168 --configs 64x128x4x2   # CHAINED, capped
    python -P tools/attention_gluon_sass.py --warp-specialized --chained [--pingpong]   # the WS kernel
                                                              # (WS_CONFIGS; + launch cap, setmaxnreg)
    python -P tools/attention_gluon_sass.py --check           # JSON line per config; exit 1 if any
                                                              # fails to compile or spills

The kernel is compiled with triton.compile on a GluonASTSource and an explicit
GPUTarget("cuda", 90, 32) (no driver needed; `.warmup` would ask for one). Helpers (ptxas -v, the
bundled binaries) come from tools/attention_sass.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile the real kernel (Gluon has no interpreter anyway)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: E402
from triton.runtime.jit import mangle_type  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from attention_sass import ptxas_verbose, usage_and_sass  # noqa: E402  (it imports dq_kernels)

from dq_kernels.sage_attention_gluon import (GLUON_CONFIGS, QUANT_BLOCK, WS_CONFIGS, WS_CONSUMER_REGS,  # noqa: E402
                                            WS_PRODUCER_REGS, _layout_for, _sage8_attn_fwd_gluon,
                                            _sage8_attn_fwd_gluon_ws, k_permuted_layout)

SASS_OPS = ("IGMMA", "QGMMA", "WARPGROUP.DEPBAR", "WARPGROUP.ARRIVE", "MUFU.EX2", "F2FP", "SHFL", "PRMT", "LOP3",
            "CS2R", "STS", "LDS", "BAR.SYNC", "BAR.ARV", "SYNCS", "UTMALDG", "USETMAXREG", "LDL", "STL")


def _desc(dtype, block):
    return mangle_type(TensorDescriptor.from_tensor(torch.empty(256, 256, dtype=dtype), block,
                                                    _layout_for(block, dtype)))


def _desc_k_permuted(bn: int, d: int):
    k2 = torch.empty(256, d, dtype=torch.int8)
    return mangle_type(TensorDescriptor(k2, [16, 2, 4, 2, d], [16 * d, 2 * d, 4 * d, d, 1], [bn // 16, 2, 4, 2, d],
                                        k_permuted_layout(bn, d)))


def compile_one(bm: int, bn: int, warps: int, stages: int, d: int = 128, maxnreg: int | None = None,
                fast_i2f: bool = True, permuted_k: bool = True, chained: bool = False, rotated: bool = False,
                packed_p: bool = False, warp_specialized: bool = False, pingpong: bool = False,
                consumer_regs: int = WS_CONSUMER_REGS, producer_regs: int = WS_PRODUCER_REGS):
    """warp_specialized: _sage8_attn_fwd_gluon_ws (bm = 128, warps = 8 consumer warps; launched with
    num_warps = 4, warp_specialize adding the second consumer warpgroup and the producer warp)."""
    desc_k = _desc_k_permuted(bn, d) if permuted_k else _desc(torch.int8, [bn, d])
    if warp_specialized:
        assert bm == 128 and warps == 8, "warp-specialized: BLOCK_M 128 = two consumer warpgroups"
        sig = dict(desc_q=_desc(torch.int8, [64, d]), QS="*fp32", desc_k=desc_k, KS="*fp32",
                   desc_v=_desc(torch.float8_e4m3fn, [d, bn]), VS="*fp32", VOFF="*fp32", Out="*bf16",
                   so_b="i32", so_h="i32", so_s="i32", so_d="i32", H="i32", S_Q="i32", S_K="i32", SQ_PAD="i32",
                   SK_PAD="i32")
        const = dict(HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, QUANT_BLOCK=QUANT_BLOCK, STAGES=stages, FAST_I2F=fast_i2f,
                     PERMUTED_K=permuted_k, CHAINED=chained, PINGPONG=pingpong, PRODUCER_REGS=producer_regs,
                     CONSUMER_REGS=consumer_regs)
        sig.update({k: "constexpr" for k in const})
        src = GluonASTSource(fn=_sage8_attn_fwd_gluon_ws, signature=sig, constexprs=const)
        options = dict(num_warps=4)
        if maxnreg:
            options["maxnreg"] = maxnreg
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    sig = dict(desc_q=_desc(torch.int8, [bm, d]), QS="*fp32", desc_k=desc_k, KS="*fp32",
               desc_v=_desc(torch.float8_e4m3fn, [d, bn]), VS="*fp32", VOFF="*fp32", Out="*bf16",
               so_b="i32", so_h="i32", so_s="i32", so_d="i32", H="i32", S_Q="i32", S_K="i32", SQ_PAD="i32",
               SK_PAD="i32")
    const = dict(HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, QUANT_BLOCK=QUANT_BLOCK, STAGES=stages, NUM_WARPS=warps,
                 FAST_I2F=fast_i2f, PERMUTED_K=permuted_k, CHAINED=chained, ROTATED=rotated, PACKED_P=packed_p)
    sig.update({k: "constexpr" for k in const})
    src = GluonASTSource(fn=_sage8_attn_fwd_gluon, signature=sig, constexprs=const)
    options = dict(num_warps=warps)
    if maxnreg:
        options["maxnreg"] = maxnreg
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def ptxas_report(ptx: str) -> dict:
    """ptxas -v on the PTX: registers, spill bytes, and whether it serialized the wgmmas (C7514)."""
    text = ptxas_verbose(ptx)
    regs = re.search(r"Used (\d+) registers", text)
    spill = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    return dict(registers=int(regs.group(1)) if regs else None, spill_bytes=spill,
                serialized="C7514" in text or "C7513" in text)


def analyse(k) -> dict:
    usage, sass = usage_and_sass(k)
    row = ptxas_report(k.asm["ptx"])
    row["cubin_registers"] = int(re.search(r"REG:(\d+)", usage).group(1))
    row["stack"] = int(re.search(r"STACK:(\d+)", usage).group(1))
    row["smem_bytes"] = k.metadata.shared
    row["counts"] = {o: len(re.findall(rf"\b{re.escape(o)}(?![A-Z0-9])", sass)) for o in SASS_OPS}
    row["ex2_overlapped"] = ex2_overlapped(sass)
    row["_sass"] = sass
    return row


def ex2_overlapped(sass: str) -> list[int]:
    """Per P·V wgmma that has a wait(1) before it completes: how many MUFU.EX2 ptxas left between that
    WARPGROUP.DEPBAR.LE 1 (the scores are in) and the next DEPBAR.LE 0 (the P·V is done) — the
    softmax that runs under the tensor cores. All of a tile's exponentials (64·BLOCK_N/128 a thread)
    is full overlap; a handful means ptxas hoisted the wait."""
    lines = [ln for ln in sass.splitlines() if re.search(r"/\*[0-9a-f]{4,}\*/\s+\S", ln)]
    out = []
    for i, ln in enumerate(lines):
        if "DEPBAR.LE gsb0, 0x1" in ln:
            n = 0
            for m in lines[i + 1:]:
                if "DEPBAR.LE gsb0, 0x0" in m:
                    break
                n += "MUFU.EX2" in m
            out.append(n)
    return out


def ws_registers(ptx: str) -> dict:
    """What warp_specialize lowered to: the launch register cap (.maxnreg; ptxas's 'Used N registers'
    is this launch figure) and the setmaxnreg.inc / .dec values in the PTX (per partition: the default
    partition's and each worker's, plus the idle / restore values of Triton's partition switch)."""
    launch = re.search(r"\.maxnreg (\d+)", ptx)
    return dict(launch_maxnreg=int(launch.group(1)) if launch else None,
                setmaxnreg=[f"{m.group(1)}{m.group(2)}" for m in
                            re.finditer(r"setmaxnreg\.(inc|dec)\.sync\.aligned\.u32\s+(\d+)", ptx)],
                threads=int(re.search(r"\.reqntid (\d+)", ptx).group(1)) if ".reqntid" in ptx else None)


def configs_for(d: int, only=None, warp_specialized: bool = False):
    for bm, bn, w, s in (WS_CONFIGS if warp_specialized else GLUON_CONFIGS):
        if only is None or (bm, bn, w, s) in only:
            yield bm, bn, w, s


def compile_and_analyse(bm, bn, w, s, d, maxnreg=None, dump: Path | None = None, permuted_k: bool = True,
                        chained: bool = False, packed_p: bool = False, rotated: bool = False,
                        warp_specialized: bool = False, pingpong: bool = False,
                        consumer_regs: int = WS_CONSUMER_REGS, producer_regs: int = WS_PRODUCER_REGS) -> dict:
    """One config: the report row, or {'error': ...} when it does not compile."""
    row = dict(head_dim=d, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s, maxnreg=maxnreg, permuted_k=permuted_k,
               chained=chained, packed_p=packed_p, rotated=rotated, warp_specialized=warp_specialized,
               pingpong=pingpong)
    try:
        k = compile_one(bm, bn, w, s, d, maxnreg, permuted_k=permuted_k, chained=chained, packed_p=packed_p,
                        rotated=rotated, warp_specialized=warp_specialized, pingpong=pingpong,
                        consumer_regs=consumer_regs, producer_regs=producer_regs)
    except Exception as e:  # report it and go on with the other configs
        row["error"] = f"{type(e).__name__}: {e}"[-2000:]
        return row
    row.update(analyse(k))
    if warp_specialized:
        row.update(ws_registers(k.asm["ptx"]))
    sass = row.pop("_sass")
    if dump:
        dump.mkdir(parents=True, exist_ok=True)
        stem = (f"sage8_gluon_d{d}_m{bm}_n{bn}_w{w}_s{s}" + (f"_r{maxnreg}" if maxnreg else "")
                + ("_chained" if chained else "") + ("_packed" if packed_p else "") + ("_rotated" if rotated else "") + ("_ws" if warp_specialized else "")
                + ("_pingpong" if pingpong else ""))
        (dump / f"{stem}.ttgir").write_text(k.asm["ttgir"])
        (dump / f"{stem}.ptx").write_text(k.asm["ptx"])
        (dump / f"{stem}.sass").write_text(sass)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--head-dims", default="128,64")
    p.add_argument("--configs", default=None, help="only these, e.g. '64x128x4x2,128x128x8x2' (BM x BN x warps x stages)")
    p.add_argument("--maxnreg", type=int, default=None, help="register cap for every config")
    p.add_argument("--dump", type=Path, default=None, help="folder for .ttgir, .ptx and .sass per config")
    p.add_argument("--plain-k", action="store_true", help="K tiles in key order (P converted with shuffles) "
                   "instead of the permuted 5-D TMA box")
    p.add_argument("--chained", action="store_true", help="P·V chained into acc (the CHAINED mode)")
    p.add_argument("--packed-p", action="store_true", help="experiment: P carried as int32 words (PACKED_P)")
    p.add_argument("--rotated", action="store_true", help="experiment: loop body 'finish j, issue j+1' (ROTATED)")
    p.add_argument("--warp-specialized", action="store_true", help="the warp-specialized kernel (WS_CONFIGS: "
                   "a 1-warp TMA producer, two consumer warpgroups)")
    p.add_argument("--pingpong", action="store_true", help="warp-specialized: the two consumer warpgroups take "
                   "turns issuing their wgmmas (mbarrier ping-pong)")
    p.add_argument("--consumer-regs", type=int, default=WS_CONSUMER_REGS, help="warp-specialized: setmaxnreg of "
                   "consumer warpgroup 1 (warp_specialize's worker_num_regs)")
    p.add_argument("--producer-regs", type=int, default=WS_PRODUCER_REGS, help="warp-specialized: setmaxnreg of "
                   "the producer warp")
    p.add_argument("--check", action="store_true", help="JSON line per config; exit 1 if one fails or spills")
    args = p.parse_args()
    only = None if args.configs is None else {tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")}
    failed = 0
    if not args.check:
        print(f"{'D':>3} {'BM':>4} {'BN':>4} {'warps':>5} {'stages':>6} {'cap':>4} {'mode':>13} {'regs':>5} {'spill':>5} {'stack':>5} "
              f"{'smem KB':>7} {'serial':>6} {'ex2||':>7}  " + " ".join(f"{o.split('.')[-1]:>8}" for o in SASS_OPS), flush=True)
    for d in (int(x) for x in args.head_dims.split(",")):
        for bm, bn, w, s in configs_for(d, only, args.warp_specialized):
            row = compile_and_analyse(bm, bn, w, s, d, args.maxnreg, args.dump, not args.plain_k, args.chained,
                                      args.packed_p, args.rotated, args.warp_specialized, args.pingpong,
                                      args.consumer_regs, args.producer_regs)
            mode = ("ws-" if args.warp_specialized else "") + ("pp-" if args.pingpong else "") + (
                "chained" if args.chained else "fresh")
            bad = "error" in row or row["spill_bytes"] > 0 or row["stack"] > 0
            failed |= bad
            if args.check:
                print(json.dumps(row), flush=True)
            elif "error" in row:
                print(f"{d:>3} {bm:>4} {bn:>4} {w:>5} {s:>6}  FAILED: {row['error'][-600:]}", flush=True)
            else:
                c = row["counts"]
                print(f"{d:>3} {bm:>4} {bn:>4} {w:>5} {s:>6} {args.maxnreg or '-':>4} {mode:>13} {row['registers']:>5} {row['spill_bytes']:>5} "
                      f"{row['stack']:>5} {row['smem_bytes'] / 1024:>7.1f} {'yes' if row['serialized'] else 'no':>6} "
                      f"{'/'.join(map(str, row['ex2_overlapped'])):>7}  "
                      + " ".join(f"{c[o]:>8}" for o in SASS_OPS)
                      + (f"  launch {row['launch_maxnreg']} x {row['threads']} threads, setmaxnreg "
                         + ",".join(row["setmaxnreg"]) if args.warp_specialized else ""), flush=True)
    raise SystemExit(int(failed))


if __name__ == "__main__":
    main()
