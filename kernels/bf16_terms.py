"""Products in BF16 terms with fp32 sums: how dq runs a format that Hopper has no tensor cores for
on its BF16 ones. A value that is a BF16 number (a *carrier*: an INT8 code, an E2M1·E4M3 product,
an E4M3 value) is one exact term; any other fp32 tensor is two, hi + lo, within ~2**-17 relative.
Used by 6Bit-Diffusion's carrier path (dq_cli/quant/carrier_path.py) and `dq::w4a16_linear`."""

from __future__ import annotations

import torch

__all__ = ["bf16_terms", "mm_fp32"]


def bf16_terms(t: torch.Tensor) -> list[torch.Tensor]:
    """t as BF16 tensors that sum to it: itself if BF16, else hi + lo (~2**-17 relative)."""
    if t.dtype == torch.bfloat16:
        return [t]
    hi = t.to(torch.bfloat16)
    return [hi, (t.float() - hi.float()).to(torch.bfloat16)]


def mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] · b [N, K]ᵀ with both rounded to BF16 (exact for carriers and `bf16_terms`), summed
    and returned in fp32: on CUDA one BF16 GEMM with fp32 output; elsewhere the fp32 product of the
    same values (the CPU has no such GEMM, and these paths only run there in tests)."""
    a, b = a.to(torch.bfloat16), b.to(torch.bfloat16)
    if a.is_cuda:
        return torch.mm(a, b.T, out_dtype=torch.float32)
    return a.float() @ b.float().T
