"""Whether Triton runs its kernels in the CPU interpreter (TRITON_INTERPRET=1), where some
operations differ from the GPU (FACTS.md) and the launch wrappers work around them, and the
in-kernel workarounds themselves."""

from __future__ import annotations

import os

try:  # Triton is optional for the pure-PyTorch references
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CI installs triton
    triton = None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if triton is not None:

    @triton.jit
    def round_to_e4m3(x):
        """fp32 → the nearest E4M3 value, still in fp32 (ties to even). Only for the CPU
        interpreter, whose own fp32→fp8 cast drops the carry when rounding crosses a power of two
        (127.5 becomes 64, not 128); after this the cast is exact. On a GPU the cast is
        cvt.rn.satfinite and the caller compiles this out."""
        bits = x.to(tl.int32, bitcast=True)
        lsb = (bits >> 20) & 1
        normal = ((bits + 0x7FFFF + lsb) & -1048576).to(tl.float32, bitcast=True)  # keep 3 mantissa bits
        # Below 2**-6 E4M3 is fixed point, multiples of 2**-9: round |x| with a magic add (on the
        # magnitude: a negative x would drop below 2**14 into a finer binade).
        ax = tl.abs(x)
        sub = (ax + 16384.0) - 16384.0
        return tl.where(ax < 0.015625, tl.where(x < 0, -sub, sub), normal)

    @triton.jit
    def round_to_bf16(x):
        """A finite fp32 rounded to the nearest bf16 (ties to even), still in fp32, from its bits:
        the interpreter's fp32→bf16 cast truncates (FACTS.md). After this the cast is exact on
        either side, so kernels call it unconditionally (a few integer ops). The add works on the
        magnitude bits alike for either sign; a carry into the exponent is the right rounding."""
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return bits.to(tl.float32, bitcast=True)
