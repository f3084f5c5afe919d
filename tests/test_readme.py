"""The README's commands are the ones a user copies: every `dq ...` line of its code blocks (and
`torchrun ... -m dq_cli ...`) must parse against the real command line — each subcommand and option
exists and every value has its type — without running anything."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands() -> list[tuple[int, list[str]]]:
    """(line number, dq's arguments) of each command line in the README's fenced code blocks;
    continuation lines joined, comments and the `[optional]` / `...` placeholders dropped."""
    commands, in_block, pending, start = [], False, "", 0
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        text = pending + line.split(" #")[0].strip() if pending else line.split(" #")[0].strip()
        start = start if pending else number
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if not text.startswith(("dq ", "torchrun ")):
            continue  # not a command line (YAML, output, a prose block)
        words = shlex.split(re.sub(r"\[[^\]]*\]", "", text).replace("...", ""))
        if words[:1] == ["dq"]:
            commands.append((start, words[1:]))
        elif words[:1] == ["torchrun"] and "dq_cli" in words:
            commands.append((start, words[words.index("dq_cli") + 1:]))
    return commands


def test_the_readme_has_commands():
    assert len(readme_commands()) >= 10


@pytest.mark.parametrize("line, args", readme_commands(), ids=lambda v: str(v) if isinstance(v, int) else None)
def test_readme_command_parses(line, args):
    import typer.main

    from dq_cli.app import app

    group = typer.main.get_command(app)
    context = group.make_context("dq", [args[0]])  # the README passes no options before the subcommand
    command = group.get_command(context, args[0])
    assert command is not None, f"README line {line}: no command {args[0]!r}"
    command.make_context(args[0], list(args[1:]), parent=context)  # raises on an unknown option or a bad value
