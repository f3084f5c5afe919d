"""The Gluon 8-bit attention kernel (dq_kernels.sage_attention_gluon).

Gluon has no CPU interpreter, so off a GPU the kernel is only compiled — for sm_90a, with the ptxas
that ships in the triton wheel (tools/attention_gluon_sass.py) — and checked for spills. On an sm_90
GPU (`pytest -m gpu`) it is compared with `sage_attention_reference` on the same quantized inputs at
the same key tile (the tile is part of the numerics: P is quantized against the running row max).
Bar: relative L2 error 1e-2, as tests/test_attention.py asserts for the Triton kernel (they differ
only where an fp32 rounding moves a value across an INT8/E4M3 boundary).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from dq_kernels import sage_attention as sa
from dq_kernels.sage_quant import sage_quantize
from test_attention import qkv as attention_inputs, rel  # the same inputs and error measure as the Triton kernel's tests

hopper = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                            reason="the Gluon kernel needs an sm_90 GPU")


def qkv(b, h, s_q, s_k, d, seed, bias=0.0):
    """bf16 CUDA inputs in diffusers' memory layout [B, S, H, D], seen as [B, H, S, D]."""
    return attention_inputs(b, h, s_q, s_k, d, seed, bias, device="cuda", dtype=torch.bfloat16)


def _compile_check(*extra: str, config: str = "64x128x4x2") -> dict:
    """tools/attention_gluon_sass.py --check on one tile (default 64x128 / 4 warps / 2 stages) at D = 128
    (sm_90a, no GPU needed): its one report row."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile the real kernel
    run = subprocess.run([sys.executable, "-P", str(root / "tools" / "attention_gluon_sass.py"), "--check",
                          "--head-dims", "128", "--configs", config, *extra],
                         capture_output=True, text=True, env=env, cwd=root, timeout=600)
    if "ptxas" in run.stderr and "No such file" in run.stderr:
        pytest.skip("this triton wheel carries no ptxas")
    if "No module named 'triton.experimental.gluon'" in run.stderr:
        pytest.skip("this triton has no Gluon")
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1, run.stdout + run.stderr[-3000:]
    r = rows[0]
    assert "error" not in r, r.get("error")
    return r


def _assert_pipelined_without_spill(r: dict) -> None:
    assert r["spill_bytes"] == 0 and r["stack"] == 0 and not r["serialized"], r
    assert r["counts"]["IGMMA"] > 0 and r["counts"]["QGMMA"] > 0 and r["counts"]["WARPGROUP.DEPBAR"] > 0, r
    assert r["counts"]["LDL"] == 0 and r["counts"]["STL"] == 0, r
    # the softmax's exponentials sit between the wait for the scores and the wait for the P·V (64·128/128
    # a thread per step): the P·V wgmma overlaps them
    assert r["ex2_overlapped"] and min(r["ex2_overlapped"]) >= 48, r["ex2_overlapped"]


@pytest.mark.skipif(sa.triton is None, reason="needs triton")
def test_gluon_kernel_compiles_for_hopper_without_spills():
    """Compile the default tile for sm_90a (no GPU needed) and read ptxas's report: no spill, no
    stack, both tensor-core paths (IGMMA for QKᵀ, QGMMA for P·V) present with async waits, not
    serialized, and the softmax overlapping the P·V."""
    _assert_pipelined_without_spill(_compile_check())


@pytest.mark.skipif(sa.triton is None, reason="needs triton")
def test_gluon_chained_compiles_without_spills():
    """The CHAINED mode (P·V accumulated into acc by the wgmma): no spill, pipelined, and fewer
    registers than the fresh-accumulator mode (207 against 246 with Triton 3.6)."""
    r = _compile_check("--chained")
    _assert_pipelined_without_spill(r)
    assert r["registers"] <= 232, r["registers"]


@pytest.mark.skipif(sa.triton is None, reason="needs triton")
@pytest.mark.parametrize("pingpong", [False, True])
def test_gluon_warp_specialized_compiles_without_spills(pingpong):
    """The warp-specialized kernel (1-warp TMA producer, two consumer warpgroups; chained, 128 x 128 keys,
    2 stages): no spill, wgmmas not serialized, the softmax between the two waits in every step of both
    consumer warpgroups, and warp_specialize's register split lowered to setmaxnreg (consumers 240,
    producer 24: 2·128·240 + 128·24 ≤ 64K registers, one CTA an SM)."""
    r = _compile_check("--warp-specialized", "--chained", *(["--pingpong"] if pingpong else []),
                       config="128x128x8x2")
    _assert_pipelined_without_spill(r)
    assert len(r["ex2_overlapped"]) == 4, r["ex2_overlapped"]  # loop + last tile, per consumer warpgroup
    assert r["counts"]["USETMAXREG"] > 0, r["counts"]
    assert "dec24" in r["setmaxnreg"] and "inc240" in r["setmaxnreg"], r["setmaxnreg"]
    assert r["threads"] == 384 and r["smem_bytes"] <= 227 * 1024, r


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("h", [2, 5])
@pytest.mark.parametrize("block_m,block_n,num_warps,num_stages", [(64, 128, 4, 2), (64, 64, 4, 3), (128, 128, 8, 2)])
@pytest.mark.parametrize("permuted_k", [True, False])
def test_gluon_kernel_matches_reference(h, block_m, block_n, num_warps, num_stages, permuted_k):
    from dq_kernels.sage_attention_gluon import sage_attention_gluon

    d = 128
    for s_q, s_k, bias in [(1000, 1000, 0.0), (777, 1297, 1.0), (150, 100, 0.5)]:  # partial last tiles
        q, k, v = qkv(1, h, s_q, s_k, d, seed=s_q + h, bias=bias)
        scale = 1 / math.sqrt(d)
        z = sage_quantize(q, k, v, scale)
        out = sage_attention_gluon(q, k, v, scale, quantized=z, block_m=block_m, block_n=block_n,
                                   num_warps=num_warps, num_stages=num_stages, permuted_k=permuted_k)
        ref = sa.sage_attention_reference(q, k, v, scale, block_n=block_n, quantized=z)
        assert out.dtype == torch.bfloat16 and out.shape == q.shape and out.stride() == q.stride()
        assert torch.isfinite(out).all()
        assert rel(out, ref) < 1e-2, (s_q, s_k, rel(out, ref))


@pytest.mark.gpu
@hopper
def test_gluon_kernel_head_dim_64_and_own_prepass():
    from dq_kernels.sage_attention_gluon import sage_attention_gluon

    q, k, v = qkv(2, 3, 513, 700, 64, seed=3, bias=1.0)
    out = sage_attention_gluon(q, k, v, block_m=64, block_n=64, num_warps=4, num_stages=2)  # runs sage_quantize
    ref = sa.sage_attention_reference(q, k, v, block_n=64)
    assert rel(out, ref) < 1e-2


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("num_stages,maxnreg", [(2, None), (3, None), (2, 168)])
def test_gluon_chained_matches_reference(num_stages, maxnreg):
    """CHAINED: acc += P·V inside the FP8 wgmma, against the reference that adds each tile's P·V in FP32.
    Hopper's FP8 wgmma accumulator keeps ~13 mantissa bits and truncates, so the chained sum drifts by
    up to ~2^-14 of |acc| per key tile: at ≤ 11 tiles (these shapes) that is far below the INT8/E4M3
    rounding and the usual 1e-2 bar holds; a 32k-key row (256 tiles, Wan 480p) gets the bench's 2e-2
    bar (Triton's chained mode measured 0.0479 vs 0.0477 against SDPA there)."""
    from dq_kernels.sage_attention_gluon import sage_attention_gluon

    d = 128
    cases = [(1000, 1000, 0.0, 1e-2), (777, 1297, 1.0, 1e-2), (150, 100, 0.5, 1e-2), (128, 32768, 0.5, 2e-2)]
    for s_q, s_k, bias, tol in cases:
        q, k, v = qkv(1, 2, s_q, s_k, d, seed=s_q + s_k, bias=bias)
        scale = 1 / math.sqrt(d)
        z = sage_quantize(q, k, v, scale)
        out = sage_attention_gluon(q, k, v, scale, quantized=z, block_m=64, block_n=128, num_warps=4,
                                   num_stages=num_stages, chained=True, maxnreg=maxnreg)
        fresh = sage_attention_gluon(q, k, v, scale, quantized=z, block_m=64, block_n=128, num_warps=4,
                                     num_stages=num_stages)
        ref = sa.sage_attention_reference(q, k, v, scale, block_n=128, quantized=z)
        assert torch.isfinite(out).all()
        err, err_fresh = rel(out, ref), rel(fresh, ref)
        print(f"chained s_q={s_q} s_k={s_k}: {err:.2e} (fresh accumulator {err_fresh:.2e})")
        assert err < tol, (s_q, s_k, err, err_fresh)


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("block_n,num_stages,chained,pingpong", [
    (128, 2, True, False), (128, 3, True, False), (128, 2, True, True), (128, 3, True, True),
    (64, 2, False, False), (64, 3, False, True), (128, 2, False, False)])
def test_gluon_warp_specialized_matches_reference(block_n, num_stages, chained, pingpong):
    """The warp-specialized kernel against the reference: partial last key and query tiles, one key tile
    only (S_K ≤ BLOCK_N), more key tiles than stages (the empty-barrier handshake wraps around), and a
    query tile whose second warpgroup has no valid row (S_Q = 150: rows 192..255; S_Q = 64: rows 64..127)."""
    from dq_kernels.sage_attention_gluon import sage_attention_gluon

    d = 128
    for s_q, s_k, bias in [(1000, 1000, 0.0), (777, 1297, 1.0), (150, 100, 0.5), (64, 3000, 0.5)]:
        q, k, v = qkv(1, 3, s_q, s_k, d, seed=s_q + s_k, bias=bias)
        scale = 1 / math.sqrt(d)
        z = sage_quantize(q, k, v, scale)
        out = sage_attention_gluon(q, k, v, scale, quantized=z, block_m=128, block_n=block_n, num_warps=8,
                                   num_stages=num_stages, chained=chained, warp_specialized=True, pingpong=pingpong)
        ref = sa.sage_attention_reference(q, k, v, scale, block_n=block_n, quantized=z)
        assert out.dtype == torch.bfloat16 and out.shape == q.shape and out.stride() == q.stride()
        assert torch.isfinite(out).all()
        assert rel(out, ref) < 1e-2, (s_q, s_k, rel(out, ref))
