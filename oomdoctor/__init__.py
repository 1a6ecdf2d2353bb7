"""oomdoctor: why PyTorch runs out of memory, with the exact line, and what to change.

    oomdoctor run train.py                  # command line
    @oomdoctor.watch                        # a decorated training step: one call = one step
    with oomdoctor.track() as session: ...  # a notebook cell or any block

All three drive the same `Session`. Inside `oomdoctor run`, `watch` and `track` join the running
session instead of starting a second one.

Names are imported on first use: `import oomdoctor` (by the pytest plugin, say) costs nothing
until something is used, and PyTorch is imported then.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "track": "api", "watch": "api",
    "Session": "session",
    "find_batch_size": "batch", "auto_batch_size": "batch",
    "Report": "report.model", "Finding": "report.model", "Step": "report.model", "Location": "report.model",
    "Remedy": "report.model",
}

__all__ = [*_EXPORTS, "load_ipython_extension", "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'oomdoctor' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext oomdoctor`: the `%%oomdoctor` cell magic and `%oomdoctor` line magic."""
    from .notebook import load_ipython_extension as load

    load(ipython)
