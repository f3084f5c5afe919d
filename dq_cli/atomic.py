"""Output files written whole or not at all: a command's checkpoint, calibration artifact or video
appears complete under its name, or not at all (an interrupted or failed write leaves nothing)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(path: Path, write: Callable[[str], None], suffix: str = ".partial") -> None:
    """`write(tmp)` to a temporary file beside `path`, then rename it over `path`. `suffix` is the
    temporary file's (a writer that picks its format by the name, such as ffmpeg, needs the real
    one). The file gets the permissions a plain open() would give: mkstemp's own are 0600, which
    left checkpoints and videos unreadable to the other users and jobs on a shared machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask
