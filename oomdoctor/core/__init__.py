"""The pieces a `Session` (session.py) drives: the recorded `Timeline` the detectors read, the
step clock, the memory sources, the hook set and the report builder."""
