"""The one report format every `dq bench` mode writes (model, quality, kernels, e2e), and what they
share: where the numbers came from (device, driver, versions, git commit, command line), loading a
report back (older versions included), merging reports of one device, and sizes of tensors as they
sit in memory and as a safetensors file would hold them.

Schema (report_version 2):

    {"schema": "dq-bench", "report_version": 2, "kind": "model" | "quality" | "kernels" | "e2e",
     "environment": {device, gpu, driver, cuda, versions: {dq, torch, triton, diffusers, torchao, python},
                     git_commit, git_dirty, command, switches (the DQ_* variables set; since
                     2026-12-01, absent before), ... and version 1's keys: dq, torch, python,
                     machine, cuda, cpu_threads},
     "settings": {...}, "rows": [...], "notes": [...]}

Version 1 reports (no "schema"; "model" reports had no "kind") still load: `load` fills in the
kind, so the gate compares old baselines with new runs.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
from importlib import metadata
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from dq_cli import __version__
from dq_cli.atomic import write_atomic
from dq_cli.errors import DQError

# torch is imported where it is used: loading, comparing and gating reports (`dq bench compare`, the
# CI gate) read JSON only and should not wait seconds for torch.
if TYPE_CHECKING:
    import torch

SCHEMA = "dq-bench"
REPORT_VERSION = 2
KINDS = ("model", "quality", "kernels", "e2e")
_PACKAGES = ("torch", "triton", "diffusers", "torchao", "transformers")


def versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (importing torchao just to ask is slow and loud)."""
    import torch

    out: dict[str, str | None] = {"dq": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["torch"] = torch.__version__  # the running build (+cu130 / +cpu), which metadata may not say
    return out


def nvidia_driver() -> str | None:
    """The NVIDIA driver version, from NVML when importable, else nvidia-smi; None without either."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - NVML missing or refusing: try the command line
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].strip() if out else None


def git_state(root: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout dq runs from; (None, None) outside a git checkout.

    DQ_GIT_COMMIT, when set, wins: a tree copied to a GPU machine can carry another commit's .git
    (a report of 2026-11-29 named a commit three merges old); a "-dirty" suffix (tools/stamp_commit.sh)
    says the tree had uncommitted changes. GITHUB_SHA stands in where the tree has no .git at all."""
    if os.environ.get("DQ_GIT_COMMIT"):
        commit = os.environ["DQ_GIT_COMMIT"]
        if commit.endswith("-dirty"):
            return commit[: -len("-dirty")], True
        return commit, None
    root = root or Path(__file__).resolve().parents[1]
    git = shutil.which("git")
    if git is not None:
        try:
            commit = subprocess.run([git, "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10, check=True).stdout.strip()
            status = subprocess.run([git, "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10, check=True).stdout
            return commit, bool(status.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return os.environ.get("GITHUB_SHA") or None, None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# DQ_* variables that change what runs (README, "Environment switches"); these two only change how
# the run is reported.
_REPORTING_ONLY = ("DQ_GIT_COMMIT", "DQ_PROGRESS")


def switches() -> dict[str, str]:
    """The DQ_* environment switches set for this run (kernel paths, backends): a report made with
    DQ_GEMM_TMA=0 must not read like one of the defaults."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("DQ_") and k not in _REPORTING_ONLY}


def switches_line(env: dict) -> str | None:
    """The markdown footer's line for the switches a report ran with, None for the defaults."""
    set_ = env.get("switches") or {}
    return ("Switches: " + ", ".join(f"`{k}={v}`" for k, v in set_.items())) if set_ else None


def environment(device: str, command: str | None = None) -> dict:
    """Where a report's numbers come from. Keeps version 1's keys (dq, torch, python, machine, device,
    gpu, cuda, cpu_threads) beside the version 2 ones."""
    import torch

    env: dict = {"dq": __version__, "torch": torch.__version__, "python": platform.python_version(),
                 "machine": platform.machine(), "device": device, "cuda": torch.version.cuda}
    if str(device).startswith("cuda"):
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        props = torch.cuda.get_device_properties(index)
        env["gpu"] = torch.cuda.get_device_name(index)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 2)
        env["compute_capability"] = f"{props.major}.{props.minor}"
        env["driver"] = nvidia_driver()
    else:
        env["cpu"] = cpu_name()
        env["cpu_threads"] = torch.get_num_threads()
        env["driver"] = None
    env["versions"] = versions()
    env["git_commit"], env["git_dirty"] = git_state()
    env["command"] = command
    env["switches"] = switches()
    return env


def device_label(env: dict) -> str:
    return env.get("gpu") or env.get("cpu") or env.get("device", "?")


def new_report(kind: str, env: dict, settings: dict | None, rows: list[dict], notes: list[str] | None = None,
               **extra) -> dict:
    assert kind in KINDS, kind
    doc = {"schema": SCHEMA, "report_version": REPORT_VERSION, "kind": kind, "environment": env,
           "settings": settings or {}, "rows": rows}
    doc.update(extra)
    doc["notes"] = list(notes or [])
    return doc


def kind_of(doc: dict) -> str:
    if doc.get("kind") in KINDS:
        return doc["kind"]
    rows = doc.get("rows") or []
    if rows and "step_ms_median" in rows[0]:
        return "model"  # version 1 model reports carried no kind
    raise ValueError("no kind")


def load(path: Path, what: str = "report") -> dict:
    """Read a report written by any version of `dq bench`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DQError(f"{what} {path}: no such file")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DQError(f"{what} {path}: not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or "environment" not in doc:
        raise DQError(f"{what} {path}: not a dq bench report (no 'rows' and 'environment')")
    version = doc.get("report_version")
    if not isinstance(version, int) or version > REPORT_VERSION:
        raise DQError(f"{what} {path}: report_version {version!r}; this dq reads versions 1 to {REPORT_VERSION}")
    try:
        doc["kind"] = kind_of(doc)
    except ValueError:
        raise DQError(f"{what} {path}: cannot tell which kind of dq bench report it is "
                      f"(kind must be one of {', '.join(KINDS)})") from None
    doc.setdefault("notes", [])
    doc.setdefault("settings", {})
    return doc


def stem(out: Path) -> Path:
    """The report's path without .json/.md: `-o run.json`, `-o run` and `-o wan2.2-480p` all mean run /
    wan2.2-480p (a dot inside a name is no suffix to replace)."""
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".json", ".md") else out


def write(doc: dict, out: Path) -> list[Path]:
    """<out>.json and <out>.md, each whole or not at all; returns the paths written."""
    out = stem(out)
    json_path, md_path = out.with_name(out.name + ".json"), out.with_name(out.name + ".md")
    write_atomic(json_path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    write_atomic(md_path, lambda tmp: Path(tmp).write_text(markdown(doc)))
    return [json_path, md_path]


def markdown(doc: dict) -> str:
    """The markdown table of any kind of report."""
    kind = doc["kind"]
    if kind == "e2e":
        from dq_cli.bench_e2e import markdown as md
    elif kind == "kernels":
        from dq_cli.kernel_bench import markdown as md
    elif kind == "quality":
        from dq_cli.quality_bench import markdown as md
    else:
        from dq_cli.bench import markdown as md
    return md(doc)


def merge(docs: list[tuple[str, dict]]) -> dict:
    """One report from several of the same kind and device (e.g. one `dq bench e2e` per model or per
    configuration, each inside a time limit). Rows keep their order; a row key seen twice is an error."""
    if not docs:
        raise DQError("dq bench merge: no reports given")
    kinds = {d["kind"] for _, d in docs}
    if len(kinds) > 1:
        raise DQError(f"dq bench merge: reports of different kinds ({', '.join(sorted(kinds))})")
    first_name, first = docs[0]
    label = device_label(first["environment"])
    seen: dict[str, str] = {}
    rows: list[dict] = []
    notes: list[str] = []
    settings = []
    for name, doc in docs:
        other = device_label(doc["environment"])
        if other != label:
            raise DQError(f"dq bench merge: {name} was measured on {other}, {first_name} on {label}: "
                          "speeds from different devices do not belong in one table")
        for row in doc["rows"]:
            key = row_key(doc["kind"], row)
            if key in seen:
                raise DQError(f"dq bench merge: row '{key}' is in both {seen[key]} and {name}")
            seen[key] = name
            rows.append(row)
        notes += [n for n in doc.get("notes", []) if n not in notes]
        settings.append(doc.get("settings", {}))
    if first["kind"] == "e2e":  # speed-ups against bf16 rows that another report brought
        from dq_cli.bench_e2e import fill_ratios

        fill_ratios(rows)
    env = dict(first["environment"])
    commands = [(name, doc["environment"].get("command")) for name, doc in docs]
    if len({c for _, c in commands}) > 1:  # one "Command:" line would claim every row came from the first
        env["command"] = None
        notes = [f"merged from {name}" + (f": `{c}`" if c else "") for name, c in commands] + notes
    commits = sorted({str(doc["environment"].get("git_commit"))[:12] for _, doc in docs})
    if len(commits) > 1:
        notes.insert(0, f"the merged reports ran at different commits: {', '.join(commits)}")
    return new_report(first["kind"], env, {"merged": settings}, rows, notes,
                      merged_from=[name for name, _ in docs])


def row_key(kind: str, row: dict) -> str:
    """What identifies a row across runs: the configuration (and shape, for kernels)."""
    if kind == "kernels":
        return f"{row['model']}/{row['layer']}/{row['m']}x{row['k']}->{row['n']}"
    if kind == "e2e":
        return row["key"]
    return row["config"]


# ---- sizes --------------------------------------------------------------------------------------------
@cache
def _safetensors_dtypes() -> dict:
    import torch

    return {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
            torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


def plain_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors behind `t`: itself, or the inner tensors of a wrapper subclass (torchao's
    quantized weights hold FP8/INT8 data and scales behind a bf16-looking outer tensor)."""
    import torch

    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        out = []
        for name in names:
            out += plain_tensors(getattr(t, name))
        return out
    return [t]


def tensor_bytes(t: torch.Tensor) -> int:
    return sum(p.numel() * p.element_size() for p in plain_tensors(t))


def module_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer, as held in memory (shared tensors once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += tensor_bytes(t)
    return total


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Size of a safetensors file holding `tensors` (subclasses as their plain inner tensors), without
    writing it: 8 bytes of header length, the JSON header padded to 8 bytes, the data. The header is
    rebuilt as safetensors writes it, so the result is exact up to the order of the offsets' digits."""
    header: dict = {}
    offset = 0
    for name in sorted(tensors):
        parts = plain_tensors(tensors[name])
        for i, p in enumerate(parts):
            n = p.numel() * p.element_size()
            key = name if len(parts) == 1 else f"{name}.{i}"
            header[key] = {"dtype": _safetensors_dtypes().get(p.dtype, "U8"), "shape": list(p.shape),
                           "data_offsets": [offset, offset + n]}
            offset += n
    text = json.dumps(header, separators=(",", ":"))
    padded = math.ceil(len(text.encode()) / 8) * 8
    return 8 + padded + offset


def state_dict_bytes(components: dict[str, torch.nn.Module]) -> int:
    """What a checkpoint of these modules would take on disk (dq's own metadata not counted)."""
    tensors = {f"{c}.{k}": v for c, m in components.items() for k, v in m.state_dict().items()}
    return safetensors_bytes(tensors)
