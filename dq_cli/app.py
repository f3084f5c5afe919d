"""The `dq` command. Each subcommand lives in dq_cli/commands/ and stays thin: it parses its
options, calls the library, prints."""

from __future__ import annotations

import inspect

import typer

from dq_cli import __version__
from dq_cli.commands import bench, calibrate, generate, predictor_fit, quantize

app = typer.Typer(
    name="dq",
    help="Post-training quantization for video diffusion transformers (Wan 2.2, LTX-Video, CogVideoX): "
    "calibrate → predictor-fit → quantize → generate / bench, driven by one YAML recipe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def reflowed_help(doc: str) -> str:
    """A docstring's paragraphs each on one line: Typer's rich help keeps the source's line breaks,
    which a terminal then wraps again, leaving half-empty lines."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


for _name, _module in (("calibrate", calibrate), ("predictor-fit", predictor_fit), ("quantize", quantize),
                       ("generate", generate), ("bench", bench)):
    app.command(_name, help=reflowed_help(_module.command.__doc__))(_module.command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


def main() -> None:
    app()
