"""Calibration prompts from a local file (txt, jsonl, csv, parquet) or a `datasets` dataset saved
with `save_to_disk`. Per row, the first non-empty of the columns `prompt`, `text`, `caption` (JSON
lines need not share their keys)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

COLUMNS = ("prompt", "text", "caption")


class PromptSourceError(ValueError):
    pass


def load_prompts(source: str | Path, limit: int | None = None) -> list[str]:
    path = Path(source).expanduser()
    if not path.exists():
        raise PromptSourceError(f"{path}: no such prompt file or dataset folder")
    if path.is_dir():
        prompts = _from_dataset(path)
    elif path.suffix == ".txt":
        prompts = [line.strip() for line in path.read_text().splitlines()]
        prompts = [p for p in prompts if p and not p.startswith("#")]
    elif path.suffix in (".jsonl", ".csv", ".parquet"):
        prompts = _from_table(path)
    else:
        raise PromptSourceError(f"{path}: unknown prompt file type '{path.suffix}' (txt, jsonl, csv, parquet, "
                                "or a datasets folder)")
    if not prompts:
        raise PromptSourceError(f"{path}: holds no prompts")
    return prompts[:limit] if limit else prompts


def _prompts(ds, where: Path) -> list[str]:
    columns = [c for c in COLUMNS if c in ds.column_names]
    if not columns:
        raise PromptSourceError(f"{where}: no column named {', '.join(COLUMNS)} "
                                f"(columns: {', '.join(ds.column_names)})")
    prompts = []
    for row in zip(*(ds[c] for c in columns)):
        text = next((str(v).strip() for v in row if v is not None and str(v).strip()), None)
        if text:
            prompts.append(text)
    return prompts


@contextmanager
def _quiet_datasets():
    """datasets draws a progress bar for building even a two-line file's cache: not dq's output."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _from_table(path: Path) -> list[str]:
    kind = {".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}[path.suffix]
    with _quiet_datasets() as datasets:
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as e:  # datasets wraps parse errors in many types
            raise PromptSourceError(f"{path}: cannot read as {kind} ({e})") from None
    return _prompts(ds, path)


def _from_dataset(path: Path) -> list[str]:
    with _quiet_datasets() as datasets:
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:
            raise PromptSourceError(f"{path}: not a dataset saved with save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    return _prompts(ds, path)
