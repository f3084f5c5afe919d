"""dq_kernels.carrier_gemm (6Bit's BF16 carrier GEMM, TMA loads) against its float64 reference on
random inputs: ragged M, N and K (TMA zero-fills the edges), an A that is a column slice of a wider
tensor, with and without a row scale, a low-rank branch of a rank that is not a power of two, and a bias."""

from __future__ import annotations

import pytest
import torch

from dq_kernels.carrier_gemm import carrier_gemm, carrier_gemm_reference

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("row_scale", [False, True])  # True: the INT8 route's per-token scale
@pytest.mark.parametrize("rank", [0, 20])
@pytest.mark.parametrize("m,n,k", [(70, 48, 96), (33, 50, 40)])
def test_carrier_gemm_matches_reference(device, row_scale, rank, m, n, k):
    gen = torch.Generator().manual_seed(m + n + k + rank)
    wide = torch.randn(m, k + 16, generator=gen).to(torch.bfloat16)
    a = wide[:, :k]  # the route's padding cut to the weight's K: a strided view, not a copy
    b = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    a_scale = torch.rand(m, generator=gen) + 0.5 if row_scale else None
    b_scale = torch.rand(n, generator=gen) + 0.5
    extra = dict(bias=torch.randn(n, generator=gen))
    if rank:
        extra.update(down=torch.randn(m, rank, generator=gen).to(torch.bfloat16),
                     up=torch.randn(n, rank, generator=gen).to(torch.bfloat16))
    move = lambda t: t.to(device) if t is not None else None  # noqa: E731
    got = carrier_gemm(move(wide)[:, :k], move(b), move(a_scale), move(b_scale), out_dtype=torch.float32,
                       **{key: move(v) for key, v in extra.items()}).cpu()
    ref = carrier_gemm_reference(a, b, a_scale, b_scale, out_dtype=torch.float64, **extra)
    # fp32 sums of exact BF16 products, in another order, and the scales applied in fp32:
    # |error| <= (2·(K + R + 1)·2**-24 + 4·2**-24)·Σ|terms|
    terms = (a.double().abs() @ b.double().abs().T) * b_scale.double()[None, :]
    if row_scale:
        terms = terms * a_scale.double()[:, None]
    if rank:
        terms = terms + extra["down"].double().abs() @ extra["up"].double().abs().T
    terms = terms + extra["bias"].double().abs()
    bound = (2 * (k + rank + 1) + 4) * 2.0**-24 * terms
    assert ((got.double() - ref).abs() <= bound).all(), ((got.double() - ref).abs() / bound).max()


def test_carrier_gemm_rounds_the_output_once():
    """BF16 out is the fp32 result rounded to nearest once (the interpreter's in-kernel cast truncates,
    so the wrapper must not use it)."""
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(40, 64, generator=gen).to(torch.bfloat16), torch.randn(24, 64, generator=gen).to(torch.bfloat16)
    scale = torch.rand(24, generator=gen) + 0.5
    got = carrier_gemm(a, b, None, scale, out_dtype=torch.bfloat16)
    full = carrier_gemm(a, b, None, scale, out_dtype=torch.float32)
    assert torch.equal(got, full.to(torch.bfloat16))


def test_carrier_gemm_rejects_other_dtypes():
    a = torch.zeros(4, 32, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="BF16"):
        carrier_gemm(a, a, None, torch.ones(4))
