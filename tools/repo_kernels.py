"""Import this checkout's kernels/ as `dq_kernels` for the tools, also where dq is not installed
(a bare GPU image) or where another checkout is installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def import_dq_kernels() -> None:
    try:
        import dq_kernels.sage_attention  # noqa: F401
    except ImportError:
        for name in [n for n in sys.modules if n == "dq_kernels" or n.startswith("dq_kernels.")]:
            del sys.modules[name]
        root = Path(__file__).resolve().parents[1] / "kernels"
        spec = importlib.util.spec_from_file_location("dq_kernels", root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["dq_kernels"] = module
        spec.loader.exec_module(module)
