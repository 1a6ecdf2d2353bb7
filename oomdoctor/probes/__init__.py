"""Probes observe memory and graphs while the user's code runs. They never print.

A probe is an object with these methods, all called by the `Session` on its own thread:

    start(session)                         the session starts (install hooks here)
    stop()                                 the session ends: remove every hook, record last events
    forward_start(session, module)         a root module's forward begins (depth 0 -> 1)
    forward_end(session, module, output)   a root module's forward returned
    step_end(session, step)                a step closed (`report.model.Step`)

Probes record what they see as events on `session.timeline` (`add_event(kind, **data)`); the
pure detectors turn events into findings.
"""
from __future__ import annotations


def default_probes() -> list:
    """The probes every session runs."""
    from .graphs import GraphProbe
    from .growth import GrowthProbe

    return [GraphProbe(), GrowthProbe()]
