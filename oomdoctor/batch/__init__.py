"""The largest batch size that fits: the search engine, the in-process API and script trials.

    result = find_batch_size(train, capacity="16GiB")   # train(batch_size) runs a few steps
    @auto_batch_size(capacity="16GiB")                   # train(batch_size, ...) at the found size

`oomdoctor batch` (cli/batch.py) runs the same search on a script, one process per trial.
"""
from __future__ import annotations

from typing import Any

from .search import BatchResult, Trial, search

__all__ = ["BatchResult", "Trial", "auto_batch_size", "find_batch_size", "search"]


def __getattr__(name: str) -> Any:
    # The in-process API imports torch: load it on first use, so that the CLI starts without it.
    if name in ("auto_batch_size", "find_batch_size"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
