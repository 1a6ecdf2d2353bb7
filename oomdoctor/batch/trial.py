"""One script trial of `oomdoctor batch`: `oomdoctor run` with the run's moments recorded.

    python -m oomdoctor.batch.trial MOMENTS.json run --quiet --json REPORT.json ... SCRIPT ARGS

runs the `oomdoctor run` command line as `python -m oomdoctor` would (same exit code, same
report) inside `PeakMoments` (moments.py), and writes the moments as a JSON list to MOMENTS.json
at the end, also when the script ran out of memory. A file that cannot be written is no answer
lost: the search fits the report's peak alone.
"""
from __future__ import annotations

import json
import sys

from ..cli import main as cli_main
from .moments import PeakMoments


def main(argv: list[str]) -> None:
    path, command = argv[0], argv[1:]
    moments = PeakMoments()
    try:
        with moments:
            cli_main(command)  # exits (SystemExit) with the run's exit code
    finally:
        _write(path, moments.values)


def _write(path: str, values: list[int]) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(values, f)
    except OSError:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
