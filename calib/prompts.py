"""Calibration prompts from a local file (txt, jsonl, csv, parquet) or a `datasets` dataset saved
with `save_to_disk`. Column `prompt`, else `text`, else `caption`."""

from __future__ import annotations

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


def _column(names: list[str], where: Path) -> str:
    for c in COLUMNS:
        if c in names:
            return c
    raise PromptSourceError(f"{where}: no column named {', '.join(COLUMNS)} (columns: {', '.join(names)})")


def _from_table(path: Path) -> list[str]:
    import datasets

    kind = {".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}[path.suffix]
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:  # datasets wraps parse errors in many types
        raise PromptSourceError(f"{path}: cannot read as {kind} ({e})") from None
    col = _column(ds.column_names, path)
    return [str(p).strip() for p in ds[col] if p and str(p).strip()]


def _from_dataset(path: Path) -> list[str]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise PromptSourceError(f"{path}: not a dataset saved with save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    col = _column(ds.column_names, path)
    return [str(p).strip() for p in ds[col] if p and str(p).strip()]
