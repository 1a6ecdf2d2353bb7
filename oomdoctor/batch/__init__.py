"""The largest batch size that fits: the search engine, the in-process API and script trials.

    result = find_batch_size(train, capacity="16GiB")   # train(batch_size) runs a few steps
    @auto_batch_size(capacity="16GiB")                   # train(batch_size, ...) at the found size

`oomdoctor batch` (cli/batch.py) runs the same search on a script, one process per trial.
"""
from __future__ import annotations

from .api import auto_batch_size, find_batch_size
from .search import BatchResult, Trial, search

__all__ = ["BatchResult", "Trial", "auto_batch_size", "find_batch_size", "search"]
