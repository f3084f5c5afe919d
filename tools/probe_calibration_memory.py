"""Peak host memory of saving calibration reservoirs, with a sorted copy of each (dq before the
seventeenth session) or with the reservoirs' own sorted storage (`TokenReservoir.sample`'s views).

    python -P tools/probe_calibration_memory.py [--layers 40] [--tokens 2048] [--features 5120]

Each mode runs in its own process (peak RSS is per process): the reservoirs are filled with random
BF16 tokens in random slot order, then saved with safetensors as `dq calibrate` saves them.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile


def measure(mode: str, layers: int, tokens: int, features: int) -> str:
    import torch
    from safetensors.torch import save_file

    from dq_calib.stats import TokenReservoir

    reservoirs = []
    for i in range(layers):
        r = TokenReservoir(features, tokens, seed=i)
        r.update(torch.randn(3 * tokens, features, dtype=torch.bfloat16), torch.zeros(3 * tokens, 5, dtype=torch.int32))
        reservoirs.append(r)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if mode == "copy":
        saved = {f"l{i}.tokens": r.tokens[r.order()] for i, r in enumerate(reservoirs)}
    else:
        saved = {f"l{i}.tokens": r.sample()[0] for i, r in enumerate(reservoirs)}
    with tempfile.TemporaryDirectory() as tmp:
        save_file({k: v.contiguous() for k, v in saved.items()}, f"{tmp}/a.safetensors")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    size = layers * tokens * features * 2 / 2**30
    return f"{mode}: reservoirs {size:.2f} GiB; peak RSS {before:.2f} GiB before saving, {peak:.2f} GiB after"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--features", type=int, default=5120)
    ap.add_argument("--mode", choices=["copy", "views"])
    a = ap.parse_args()
    if a.mode:
        print(measure(a.mode, a.layers, a.tokens, a.features))
        return
    import safetensors

    print(f"safetensors {safetensors.__version__}")
    for mode in ("copy", "views"):
        subprocess.run([sys.executable, "-P", __file__, "--mode", mode, "--layers", str(a.layers), "--tokens",
                        str(a.tokens), "--features", str(a.features)], check=True)


if __name__ == "__main__":
    main()
