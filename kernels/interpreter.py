"""Whether Triton runs its kernels in the CPU interpreter (TRITON_INTERPRET=1), where some
operations differ from the GPU (FACTS.md) and the launch wrappers work around them."""

from __future__ import annotations

import os


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
