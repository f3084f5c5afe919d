"""Runs several `dq` commands in each process of one torchrun launch (tests/test_scale_out.py):
one process-group start-up and one import of torch and diffusers for all of them.

    torchrun --nproc-per-node 2 tests/distributed_driver.py COMMANDS.json

COMMANDS.json: a list of {"args": [...], "local_scales": bool, "no_mp4": bool}. `local_scales` runs
the command with dq's whole-sequence scales switched off (each process rounds its slice on its own):
the negative control that shows the comparison can tell. `no_mp4` skips writing the MP4 (GPU images
without imageio-ffmpeg; the test compares the --save-frames output). Exits non-zero if any command does.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from unittest import mock

import torch
import torch.distributed as dist


def main(path: str) -> int:
    from dq_cli import parallel, video
    from dq_cli.app import app

    if torch.cuda.is_available():  # as dq itself joins: NCCL for CUDA tensors, gloo for CPU ones
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")  # dq uses this group and leaves it to us
    try:
        for command in json.loads(open(path).read()):
            with ExitStack() as patches:
                if command.get("local_scales"):
                    patches.enter_context(mock.patch.object(parallel, "SequenceShard", lambda *a: None))
                if command.get("no_mp4"):
                    patches.enter_context(mock.patch.object(video, "write_mp4", lambda *a, **k: None))
                code = app(command["args"], standalone_mode=False)
            if code:
                print(f"dq {' '.join(command['args'])}: exit {code}", file=sys.stderr)
                return int(code)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
