"""Strings from a run or a saved report, made safe to show: `clean(value, limit)`.

Every renderer (terminal and HTML) passes user text through `clean` before drawing it. A report
string may come from anywhere (the user's argv, an exception message, a file someone sent), so:
- control characters go: ESC starts terminal sequences (OSC 52 writes the clipboard, CSI 2J
  clears the screen), CR overwrites a line, C1 codes act as ESC on some terminals; newlines and
  tabs stay;
- a string longer than `limit` is cut with a visible marker saying how much was left out, so a
  4 MB message renders as fast as a short one (rich's wrapping is superlinear in the text's length).
"""
from __future__ import annotations

import re
from typing import Any

# Lengths a reader can use; anything longer is almost surely noise or an attack.
TITLE = 300
TEXT = 4000  # details, remedies, exception messages
CODE = 2000  # one code snippet
ITEMS = 50  # findings, remedies, notes, ranks shown

# C0 but newline and tab, DEL and C1, the bidirectional overrides that reorder what a line shows,
# and lone surrogates (JSON can hold them; no terminal or UTF-8 file can).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def clean(value: Any, limit: int = TEXT) -> str:
    """`value` as text without control characters, at most `limit` characters plus a marker."""
    try:
        text = str(value)
    except ValueError:  # an int of more digits than Python converts (a crafted file can hold one)
        text = f"<an integer of {value.bit_length():,} bits>" if isinstance(value, int) else "<unprintable>"
    extra = len(text) - limit
    if extra > 0:
        text = text[:limit]
    text = _CONTROL.sub("", text)
    if extra > 0:
        text += f" … [{extra:,} more characters not shown]"
    return text


def more(shown: int, total: int, what: str) -> str:
    """The line that stands for list items left out: `… 12 more findings not shown`."""
    return f"… {total - shown:,} more {what} not shown" if total > shown else ""
