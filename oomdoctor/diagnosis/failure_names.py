"""The user's names that keep the largest live tensors when a run fails.

Called once per failure, by whatever records it, while the failed frames and their tensors are
still alive: the OOM post-mortem offers `del NAME` only where one of these names keeps a tensor
(never for activations the autograd graph keeps for backward, which no name frees). The search is
the attribution's holder search from the traceback's frames of the user's own code, with its
budget of objects, so its cost does not grow with the program.
"""
from __future__ import annotations

import types
from typing import Any

from .attribution import find_holders, is_user_file, storage_id


def names_at_failure(tb: types.TracebackType | None, storages: list[Any]) -> list[list[str]]:
    """For each storage (an untyped storage, or None when it is gone), the name of the user's
    that holds a tensor on it, [] where none does. The search starts from the outermost frame:
    a tensor kept from an earlier step is named by the loop that keeps it (`out`), not by the
    argument it was passed as (each object is named once, where it is found first)."""
    frames = _user_frames(tb)
    wanted = {id(s) for s in storages if s is not None}
    if not frames or not wanted:
        return [[] for _ in storages]
    holders = find_holders(frames, lambda t: storage_id(t) in wanted)
    names: dict[int, list[str]] = {}
    for holder in holders:
        for key in {storage_id(t) for t in holder.tensors}:
            if holder.name not in names.setdefault(key, []):
                names[key].append(holder.name)
    return [names.get(id(s), []) if s is not None else [] for s in storages]


def _user_frames(tb: types.TracebackType | None) -> list[types.FrameType]:
    """The traceback's frames of the user's own code, outermost first."""
    frames = []
    while tb is not None:
        if is_user_file(tb.tb_frame.f_code.co_filename):
            frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames
