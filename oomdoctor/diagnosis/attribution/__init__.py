"""Naming what holds memory, and finding the line of the user's code that put it there.

Expensive on purpose and therefore run only after a probe detected something (never per step):

- frames.py: which frames are the user's, the call site (and chain) of a forward;
- holders.py: the search from what the user can name (frame variables, globals, the user's
  modules) to the tensors that match, through attributes, dict keys, list items, submodules,
  hooks and closures, with a budget; `resolve` finds a holder again later;
- graph.py: a bounded walk of the autograd graph behind tensors (nodes, saved bytes, markers);
- statements.py: the statement that stores into a holder, matched by structure in every scope
  where it may be written, and the same statement fixed.
"""
from __future__ import annotations

from typing import Any

from .frames import call_chain, call_site, is_user_file, source_line, user_frames
from .graph import MARKER_KEY, NODE_BUDGET, GraphStats, storage_id, walk_graph
from .holders import Holder, all_tensors, find_holders, held_bytes, resolve, tensors_of
from .statements import Attach, attach_statement

__all__ = ["Attach", "GraphStats", "Holder", "MARKER_KEY", "NODE_BUDGET", "all_tensors", "attach_statement",
           "call_chain", "call_site", "find_holders", "held_bytes", "is_user_file", "new_event", "resolve",
           "source_line", "storage_id", "tensors_of", "user_frames", "walk_graph"]


def new_event(timeline: Any, kind: str, **data: Any) -> dict[str, Any]:
    """Add an event a probe keeps updating in place, and return it. The timeline keeps a bounded
    number of events; past it, the event is not recorded and updating it changes nothing."""
    before = len(timeline.events)
    timeline.add_event(kind, **data)
    return timeline.events[-1] if len(timeline.events) > before else {"kind": kind, **data}
