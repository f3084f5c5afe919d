"""What the subcommands share: the console, error reporting, progress, recipe and model loading."""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dq_cli.errors import DQError

console = Console(stderr=True, highlight=False)

RECIPE_OPTION = typer.Option("tiny_w4a4.yaml", "--recipe", "-r",
                             help="Recipe: a built-in name (e.g. wan22_w4a4.yaml) or a path to a YAML file.")
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="Print only the result (no progress, no notes).")
DEVICE_OPTION = typer.Option(None, "--device", help="cpu or cuda[:N] (default: cuda when available).")
ATTENTION_OPTION = typer.Option(None, "--attention", help="Self-attention backend: sdpa (diffusers') or sage8 "
                                "(8-bit: INT8 QKᵀ, FP8 PV; Triton on CUDA, its PyTorch reference on the CPU). "
                                "Default: the recipe's sampling.attention, else sdpa.")


def check_attention(backend: str | None, flag: str = "--attention") -> None:
    from dq_cli.attention import BACKENDS

    if backend is not None and backend not in BACKENDS:
        raise DQError(f"{flag} {backend}: expected one of {', '.join(BACKENDS)}")


def handle_errors(fn):
    """User errors → one line on stderr and their exit code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except DQError as e:
            console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            console.print("[red]interrupted[/]")
            raise typer.Exit(130)
        except ValueError as e:
            from dq_kernels.checks import NonFiniteError  # torch is loaded by now: the error came from it

            if not isinstance(e, NonFiniteError):
                raise
            console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(1)

    return wrapper


def _quiet_libraries() -> None:
    # diffusers/transformers log notes meant for their own developers (torchao probing, dtype casts).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # torchao (a test-only oracle) logs its missing CUDA extensions when diffusers probes it.
    for name in ("torch.utils._pytree", "torchao"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()  # "Loading pipeline components": dq shows its own progress
    from transformers.utils import logging as tlog

    tlog.disable_progress_bar()
    logging.getLogger("datasets").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


def pick_device(device: str | None) -> str:
    from dq_cli.session import pick_device as pick

    return pick(device, "--device")


def set_threads() -> None:
    import torch

    # OMP_NUM_THREADS wins when set, as users of torch expect (e.g. several dq jobs on one host).
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)))


@contextmanager
def progress_bar(quiet: bool, description: str, total: int):
    """A rich progress bar on stderr (hidden with --quiet or when stderr is not a terminal and
    DQ_PROGRESS is unset, so CI logs stay readable)."""
    show = not quiet and (sys.stderr.isatty() or os.environ.get("DQ_PROGRESS") == "1")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not show,
                        transient=False)
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1, **kw: progress.update(task, advance=n, **kw)


def counted(n: int, noun: str) -> str:
    """'1 step', '20 steps': a count and its noun for the summary lines (nouns here take an s)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def note(quiet: bool, message: str) -> None:
    if not quiet:
        console.print(message, soft_wrap=True)


# What each command writes by default — and the next command reads — under out/, after the recipe's
# file name: out/<name>-calib(.json, .safetensors), out/<name>-predictor.json, out/<name>.safetensors.
DEFAULT_SUFFIXES = {"calibration": "-calib", "predictor": "-predictor.json", "checkpoint": ".safetensors"}


def default_output(recipe_source: str, kind: str) -> Path:
    """out/<recipe file name><suffix of `kind`> (`recipe_source` as `recipes.resolve` names it)."""
    return Path("out") / (Path(recipe_source.removeprefix("builtin:")).stem + DEFAULT_SUFFIXES[kind])


def check_writable(path: Path, what: str) -> None:
    """Refuse an output path before any work: a directory, or a place no file can be created in. The
    folders the command will create are probed at the nearest one that exists, with a temporary
    file (permissions alone miss read-only mounts and pseudo file systems such as /proc)."""
    if path.exists() and path.is_dir():
        raise DQError(f"{what} {path}: is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise DQError(f"{what} {path}: cannot write in {folder} ({e.strerror or e})") from None


def load_image(path: Path):
    """--image's first frame as RGB (an unreadable file is the user's error)."""
    from dq_cli.video import load_image as load

    return load(path, "--image")
