"""Is the 8-bit attention kernel bound by moving K and V from L2 into the SMs? (a development probe, H100/H200)

Every program of `dq_kernels.sage_attention` streams the whole of its head's K8 and V8ᵀ through TMA,
once per tile of BLOCK_M queries. With the dispatched tile (64 rows, 3 CTAs an SM) that is, at Wan A14B
480p, 40 heads × 512 query tiles × 32,760 keys × 128 × 2 bytes = 172 GB a call: 6.4 TB/s at the kernel's
27 ms, and 6.4 TB/s too at 720p (915 GB in 143.5 ms; docs/measurements/attention_configs_h200.md). If
the SMs cannot take K and V from L2 much faster than that, the kernel is at a bandwidth wall that no
softmax or MMA scheduling moves, and only sharing each K/V tile between more query rows can (128-row
tiles in one CTA, or TMA multicast across a cluster); if they can, the wall is elsewhere.

Two stripped kernels, each on the attention kernel's grid, descriptors, tile shapes and pipelining:
`_stream_kv` only moves K and V (a cheap reduction keeps the loads alive), `_mma_only` adds the two MMAs
a tile but no softmax. Their times beside the attention kernel's on the same inputs say which of
streaming, tensor cores and softmax sets the pace (a row per tile of CONFIGS: BLOCK_M, BLOCK_N, warps,
stages).

    python -P tools/probe_attention_stream.py [--shape wan480|wan720]       # CUDA
    TRITON_INTERPRET=1 python -P tools/probe_attention_stream.py --check   # CPU: exact, small shape

Written in the eighteenth session; run in the nineteenth on an H200 (docs/measurements/attention_stream_h200.log):
streaming alone 16.7 ms at 480p (10.2 TB/s), the MMAs alone 18.2, the kernel 27.1. Not the wall.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from repo_kernels import import_dq_kernels  # noqa: E402

import_dq_kernels()
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

from dq_kernels.sage_attention import sage_attention_triton  # noqa: E402
from dq_kernels.sage_quant import sage_quantize  # noqa: E402

SHAPES = {"wan480": (1, 40, 32760, 128), "wan720": (1, 40, 75600, 128), "small": (1, 2, 300, 64)}
# (BLOCK_M, BLOCK_N, warps, stages, maxnreg): the dispatched tile at D = 128 (three CTAs an SM), the same
# uncapped (two), and the 128-row tile it beat (one)
CONFIGS = [(64, 128, 4, 2, 168), (64, 128, 4, 2, None), (128, 128, 8, 3, None)]


@triton.jit
def _stream_kv(desc_k, desc_v, Out, SK_PAD, S_K, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
               STAGES: tl.constexpr):
    """Each program reads its head's K8 [S_K, D] and V8ᵀ [D, S_K] tile by tile, as the attention
    kernel's loop does, and writes the XOR of everything it read, so no load can be
    dropped. The descriptors see the bytes as int32 (four to a word): the same TMA traffic, but a
    quarter of the elements to consume, one LOP3 each. (Summing the bytes as floats, the first
    version, cost two conversions a byte on a quarter-rate pipe: more work than the softmax.)"""
    bh = tl.program_id(1)
    acc_k = tl.zeros([BLOCK_N], dtype=tl.int32)
    acc_v = tl.zeros([BLOCK_N // 4], dtype=tl.int32)
    for start_n in tl.range(0, S_K, BLOCK_N, num_stages=STAGES):
        acc_k ^= tl.xor_sum(desc_k.load([bh * SK_PAD + start_n, 0]), 1)  # int32 [BLOCK_N, D / 4]
        acc_v ^= tl.xor_sum(desc_v.load([bh * HEAD_DIM, start_n // 4]), 0)  # int32 [D, BLOCK_N / 4]
    tl.store(Out + bh * tl.num_programs(0) + tl.program_id(0), tl.xor_sum(acc_k, 0) ^ tl.xor_sum(acc_v, 0))


@triton.jit
def _mma_only(desc_q, desc_k, desc_v, Out, SQ_PAD, SK_PAD, S_K, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr):
    """The attention kernel's loop without its softmax: the same loads and the same two MMAs a tile
    (INT8 QKᵀ, FP8 P·V into a fresh accumulator added in FP32), P a constant tile of ones, and the
    scores kept by an elementwise max (one integer op a score) so the QKᵀ cannot be dropped."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    q = desc_q.load([bh * SQ_PAD + start_m * BLOCK_M, 0])  # int8 [BLOCK_M, D]
    top = tl.zeros([BLOCK_M], dtype=tl.int32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    p = tl.full([BLOCK_M, BLOCK_N], 1.0, tl.float32).to(tl.float8e4nv)
    for start_n in range(0, S_K, BLOCK_N):
        k = desc_k.load([bh * SK_PAD + start_n, 0]).T  # int8 [D, BLOCK_N]
        top = tl.maximum(top, tl.max(tl.dot(q, k), 1))
        v = desc_v.load([bh * HEAD_DIM, start_n]).T  # fp8 [BLOCK_N, D]
        acc += tl.dot(p, v)
    out = acc + top.to(tl.float32)[:, None]
    rows = bh * SQ_PAD + start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(Out + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :], out)


def mma_only(z, block_m: int, block_n: int, warps: int, stages: int, maxnreg: int | None = None) -> torch.Tensor:
    bh, sq_pad, d = z.q8.shape
    sk_pad = z.k8.shape[1]
    desc_q = TensorDescriptor.from_tensor(z.q8.view(-1, d), [block_m, d])
    desc_k = TensorDescriptor.from_tensor(z.k8.view(-1, d), [block_n, d])
    desc_v = TensorDescriptor.from_tensor(z.v8t.view(-1, sk_pad), [d, block_n])
    out = torch.empty(bh, sq_pad, d, device=z.q8.device)
    _mma_only[(triton.cdiv(z.s_q, block_m), bh)](desc_q, desc_k, desc_v, out, sq_pad, sk_pad,
                                                 (z.s_k // block_n) * block_n, HEAD_DIM=d, BLOCK_M=block_m,
                                                 BLOCK_N=block_n, num_warps=warps, num_stages=stages, maxnreg=maxnreg)
    return out


def stream(z, block_m: int, block_n: int, warps: int, stages: int, maxnreg: int | None = None) -> torch.Tensor:
    """Launch the streaming kernel on the pre-pass's buffers with the attention kernel's grid. `tl.range`'s
    pipeliner keeps stages - 1 buffers where the attention kernel's dot-fed loads keep `num_stages` (sm_90a:
    64.5 KB of shared memory at STAGES 3, the attention kernel's 73 at num_stages 2 with its Q tile), so the
    stream gets one stage more: the same buffers, the same CTAs an SM."""
    bh, sk_pad, d = z.k8.shape
    desc_k = TensorDescriptor.from_tensor(z.k8.view(torch.int32).view(-1, d // 4), [block_n, d // 4])
    desc_v = TensorDescriptor.from_tensor(z.v8t.view(torch.uint8).view(torch.int32).view(-1, sk_pad // 4),
                                          [d, block_n // 4])
    grid = (triton.cdiv(z.s_q, block_m), bh)
    out = torch.empty(grid[1], grid[0], dtype=torch.int32, device=z.k8.device)
    _stream_kv[grid](desc_k, desc_v, out, sk_pad, (z.s_k // block_n) * block_n, HEAD_DIM=d, BLOCK_N=block_n,
                     STAGES=stages + 1, num_warps=warps, num_stages=stages + 1, maxnreg=maxnreg)
    return out


def inputs(shape, device: str):
    b, h, s, d = shape
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(b, h, s, d, generator=g).to(device, torch.bfloat16) for _ in range(3))
    return q, k, v, sage_quantize(q, k, v, d ** -0.5)


def check() -> None:
    """Interpreter: the kernel's sums against torch on the same quantized tensors."""
    _, _, _, z = inputs(SHAPES["small"], "cpu")
    bn = 64
    n_full = (z.s_k // bn) * bn
    out = stream(z, 64, bn, 4, 2)
    rows = lambda t: t.reshape(len(out), -1).view(torch.uint8)  # noqa: E731
    words = torch.cat([rows(z.k8[:, :n_full]), rows(z.v8t[:, :, :n_full])], 1)  # the bytes read, per head
    want = torch.zeros(len(out), dtype=torch.int32)
    for w in words.contiguous().view(torch.int32).unbind(1):
        want ^= w
    want = want[:, None].expand_as(out)
    print(f"streamed XORs against torch: {(out != want).sum().item()} of {out.numel()} differ")
    assert torch.equal(out, want)
    got = mma_only(z, 64, bn, 4, 2)[:, :z.s_q]
    scores = torch.bmm(z.q8[:, :z.s_q].float(), z.k8[:, :n_full].float().transpose(1, 2))  # exact in fp32
    top = scores.amax(-1).clamp(min=0)  # [BH, Sq]
    want = z.v8t[:, :, :n_full].float().sum(-1)[:, None, :] + top[..., None]
    err = (got - want).abs().max().item()
    print(f"MMA-only kernel against torch: max abs diff {err:.2e} over {got.numel()} values")
    assert err <= 1e-5 * want.abs().max().item(), err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=[s for s in SHAPES if s != "small"], default="wan480")
    ap.add_argument("--check", action="store_true", help="CPU interpreter: the sums at a small shape")
    a = ap.parse_args()
    if a.check:
        check()
        return
    from triton.testing import do_bench

    q, k, v, z = inputs(SHAPES[a.shape], "cuda")
    b, h, s, d = q.shape
    for bm, bn, warps, stages, maxnreg in CONFIGS:
        bytes_moved = triton.cdiv(s, bm) * b * h * (s // bn) * bn * d * 2  # K8 and V8ᵀ, one byte each
        ms = do_bench(lambda: stream(z, bm, bn, warps, stages, maxnreg), warmup=100, rep=500)
        mma = do_bench(lambda: mma_only(z, bm, bn, warps, stages, maxnreg), warmup=100, rep=500)
        attn = do_bench(lambda: sage_attention_triton(q, k, v, config=dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps,
                                                                           num_stages=stages, maxnreg=maxnreg),
                                                           quantized=z),
                        warmup=100, rep=500)
        print(f"{a.shape} {bm}x{bn} {warps}w {stages}st maxnreg {maxnreg}: K/V streaming alone {ms:.2f} ms "
              f"({bytes_moved / ms / 1e9:.2f} TB/s of {bytes_moved / 1e9:.0f} GB); the MMAs without the softmax "
              f"{mma:.2f} ms; attention kernel {attn:.2f} ms "
              f"({bytes_moved / attn / 1e9:.2f} TB/s)", flush=True)


if __name__ == "__main__":
    main()
