"""Byte sizes as users write them (`512MiB`, `2GiB`, `1.5GB`, `1048576`) and as we print them."""
from __future__ import annotations

import re

from .errors import BadInput

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse a size such as `512MiB`, `2GiB`, `1.5GB` or `1048576` into bytes.

    Raises BadInput (exit code 2) with a one-line message for anything else.
    """
    if isinstance(text, int):
        if text <= 0:
            raise BadInput(f"size must be positive, got {text}")
        return text
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise BadInput(f"invalid size {text!r}: use bytes or a unit, e.g. 512MiB, 2GiB, 1.5GB")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise BadInput(f"size must be positive, got {text!r}")
    return value


def format_bytes(n: int | float | None, signed: bool = False) -> str:
    """Binary units, three significant digits: `1.50 GiB`, `512.00 MiB`, `12 B`."""
    if n is None:
        return "-"
    sign = "-" if n < 0 else ("+" if signed and n > 0 else "")
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{int(n)} B" if unit == "B" else f"{sign}{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
