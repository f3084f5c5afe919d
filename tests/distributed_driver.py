"""Runs several `dq` commands in each process of one torchrun launch (tests/test_scale_out.py):
one process-group start-up and one import of torch and diffusers for all of them.

    torchrun --nproc-per-node 2 tests/distributed_driver.py COMMANDS.json

COMMANDS.json: a list of {"args": [...], "local_scales": bool}. `local_scales` runs the command with
dq's whole-sequence scales switched off (each process rounds its slice on its own): the negative
control that shows the comparison can tell. Exits non-zero if any command does.
"""

from __future__ import annotations

import json
import sys
from unittest import mock

import torch.distributed as dist


def main(path: str) -> int:
    from dq_cli import parallel
    from dq_cli.app import app

    dist.init_process_group("gloo")  # dq uses this group and leaves it to us
    try:
        for command in json.loads(open(path).read()):
            patch = mock.patch.object(parallel, "SequenceShard", lambda *a: None) if command.get("local_scales") \
                else mock.patch.object(parallel, "SequenceShard", parallel.SequenceShard)
            with patch:
                code = app(command["args"], standalone_mode=False)
            if code:
                print(f"dq {' '.join(command['args'])}: exit {code}", file=sys.stderr)
                return int(code)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
