"""The NVFP4 × NVFP4 GEMM for Blackwell (dq_kernels.nvfp4_gemm).

What can be checked without a Blackwell GPU is checked here: the reference against float64 math on
dq's own NVFP4 storage (ragged M, N and a K that is not a multiple of the kernel's 128), and that the
kernel compiles for sm_100a into the native block-scaled FP4 MMA. The interpreter has no
`tl.dot_scaled` and triton 3.6 cannot compile it for Hopper with E4M3 scales, so the kernel's output
is compared with the reference only on a Blackwell GPU (`pytest -m gpu`), skipped elsewhere."""

from __future__ import annotations

import pytest
import torch

from dq_kernels import nvfp4_gemm as ng
from dq_kernels.nvfp4 import pack_fp4, quantize_nvfp4

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def operands(m: int, n: int, k: int, seed: int, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.exp(torch.randn(k, generator=g))  # uneven channels
    w = torch.randn(n, k, generator=g) / k**0.5
    a_codes, a_scales, a_ts = quantize_nvfp4(x.to(device))
    b_codes, b_scales, b_ts = quantize_nvfp4(w.to(device))
    bias = torch.randn(n, generator=g).to(device)
    return (a_codes, a_scales, a_ts), (b_codes, b_scales, b_ts), bias


def decode64(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Codes (bit 3 sign, bits 0-2 an E2M1 magnitude) times their E4M3 block scale, in float64."""
    mag = torch.tensor(E2M1, dtype=torch.float64)[(codes & 7).long()]
    value = torch.where((codes & 8).bool(), -mag, mag)
    return value * scales.double().repeat_interleave(16, dim=-1)


def test_reference_matches_float64():
    """fp32 sums of exact products: within K · 2**-24 of Σ|terms| (asserted with a factor 2 spare)."""
    (ac, asc, ats), (bc, bsc, bts), bias = operands(37, 50, 96, seed=0)
    y = ng.nvfp4_gemm_reference(pack_fp4(ac), asc, ats, pack_fp4(bc), bsc, bts, bias, out_dtype=torch.float32)
    a, b = decode64(ac, asc), decode64(bc, bsc)
    ts = float(ats) * float(bts)
    exact = (a @ b.T) * ts + bias.double()
    bound = 2 * 96 * 2.0**-24 * (a.abs() @ b.abs().T) * ts + 2.0**-24 * exact.abs()
    assert ((y.double() - exact).abs() <= bound).all()
    assert y.shape == (37, 50)


@pytest.mark.parametrize("rows,groups", [(37, 6), (300, 18), (256, 16)])
def test_preshuffled_scales_reassemble_per_tile(rows, groups):
    """The scale layout's round trip, and what the kernel does per tile — load BLOCK_K / 64 blocks of
    512 contiguous scales of each 128-row chunk, reshape to [.., 32, 4, 4], transpose (0, 3, 2, 1, 4)
    — gives back each tile's [BLOCK_M, BLOCK_K / 16] scales (zeros past the end), in torch."""
    g = torch.Generator().manual_seed(rows)
    scales = (torch.rand(rows, groups, generator=g) * 8 + 0.01).to(torch.float8_e4m3fn).float()
    shuffled = ng.preshuffle_scales(scales)
    assert torch.equal(ng.unshuffle_scales(shuffled, rows, groups), scales)
    padded = torch.zeros(shuffled.shape[0] * 128, shuffled.shape[1] * 4)
    padded[:rows, :groups] = scales
    flat = shuffled.reshape(shuffled.shape[0], -1)  # [row chunk, everything else]: stride_as = J · 512
    for block_m, block_k in ((128, 128), (128, 256), (256, 256)):
        per_step = (block_k // 64) * 512
        for pid_m in range(-(-rows // block_m)):
            for k in range(-(-groups * 16 // block_k)):
                chunks = pid_m * (block_m // 128) + torch.arange(block_m // 128)
                tile = flat[chunks][:, k * per_step:(k + 1) * per_step]
                tile = tile.reshape(block_m // 128, block_k // 64, 32, 4, 4).permute(0, 3, 2, 1, 4)
                want = padded[pid_m * block_m:(pid_m + 1) * block_m,
                              k * block_k // 16:(k + 1) * block_k // 16]
                assert torch.equal(tile.reshape(block_m, block_k // 16), want)


def test_kernel_compiles_to_blackwell_block_scaled_mma():
    """Every config compiles for sm_100a (no GPU needed), its dot_scaled becomes tcgen05.mma of kind
    mxf4nvf4 with a scale per 16 elements (4X), and nothing spills (tools/nvfp4_gemm_sass.py)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    if ng.triton is None:
        pytest.skip("triton is not installed")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile the real kernel
    run = subprocess.run([sys.executable, "-P", str(root / "tools" / "nvfp4_gemm_sass.py")], capture_output=True,
                         text=True, env=env, cwd=root, timeout=600)
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(ng.NVFP4_CONFIGS), run.stdout + run.stderr[-3000:]
    for r in rows:
        assert "error" not in r, r
        assert r["mma_kinds"] == ["kind::mxf4nvf4.block_scale.scale_vec::4X"] and r["mma_count"] > 0, r
        assert r["spill_bytes"] == 0, r


@pytest.mark.gpu
@pytest.mark.skipif(not ng.supported(), reason="needs a Blackwell GPU (compute capability >= 10): not lent so far")
@pytest.mark.parametrize("m,n,k", [(300, 200, 288), (4096, 5120, 5120)])
def test_kernel_matches_reference_on_blackwell(m, n, k):
    (ac, asc, ats), (bc, bsc, bts), bias = operands(m, n, k, seed=1, device="cuda")
    args = (pack_fp4(ac), asc, ats, pack_fp4(bc), bsc, bts, bias)
    y = ng.nvfp4_gemm(*args, out_dtype=torch.float32)
    ref = ng.nvfp4_gemm_reference(*args, out_dtype=torch.float32)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
