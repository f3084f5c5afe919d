"""dq: post-training quantization for video diffusion transformers.

From Python: `dq_cli.load(checkpoint)` and `dq_cli.generate(model, prompt)` (dq_cli/api.py), imported
on first use so that `dq --help` does not wait for torch."""

__version__ = "0.1.0"
__all__ = ["generate", "load"]


def __getattr__(name: str):
    if name in __all__:
        from dq_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'dq_cli' has no attribute {name!r}")
