"""Which frames and files are the user's, and where on the stack the user's code is.

Probes run inside hooks on the user's thread, so the stack above them is the loop that is running:
`user_frames()` is that loop's frames (not torch, oomdoctor, the standard library or installed
packages), `call_site()` the line that called into torch, `call_chain()` the same line with the
user's lines that led to it (one forward call site used by training and by evaluation is two
chains).
"""
from __future__ import annotations

import linecache
import os
import sys
import sysconfig
import types

import torch

_SKIP = (
    os.path.dirname(torch.__file__) + os.sep,
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep,
    sysconfig.get_paths()["stdlib"] + os.sep,
)
_LIBRARIES = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)
_USER_FILES: dict[str, bool] = {}

Site = tuple[str, int, str]  # (file, line, function)


def is_user_file(filename: str) -> bool:
    known = _USER_FILES.get(filename)
    if known is None:
        known = _USER_FILES[filename] = not (filename.startswith(_SKIP) or filename.startswith("<frozen")
                                             or any(p in filename for p in _LIBRARIES))
    return known


def user_frames(limit: int = 8) -> list[types.FrameType]:
    """The user's frames on the current stack, innermost first."""
    frames = []
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and len(frames) < limit:
        if is_user_file(frame.f_code.co_filename):
            frames.append(frame)
        frame = frame.f_back
    return frames


def call_site() -> Site | None:
    """(file, line, function) of the innermost user frame: the line that called into torch."""
    chain = call_chain(1)
    return chain[0] if chain else None


def call_chain(depth: int = 3) -> tuple[Site, ...]:
    """The innermost `depth` user lines on the stack, innermost first; an installed package's
    line when no user frame is there (a library's own training loop)."""
    frame: types.FrameType | None = sys._getframe(1)
    chain: list[Site] = []
    fallback = None
    while frame is not None and len(chain) < depth:
        name = frame.f_code.co_filename
        if is_user_file(name):
            chain.append((name, frame.f_lineno, frame.f_code.co_name))
        elif fallback is None and not name.startswith(_SKIP) and not name.startswith("<frozen"):
            fallback = (name, frame.f_lineno, frame.f_code.co_name)
        frame = frame.f_back
    return tuple(chain) if chain else ((fallback,) if fallback else ())


def source_line(filename: str, line: int) -> str | None:
    text = linecache.getline(filename, line).strip()
    return text or None
