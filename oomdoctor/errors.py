"""Errors that oomdoctor reports to the user as one line, with the exit code they carry."""
from __future__ import annotations


class OomdoctorError(Exception):
    """Bad input or a problem the user must fix: printed as one line, never with a traceback."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class BadInput(OomdoctorError):
    """The user gave something oomdoctor cannot use (a missing file, a malformed size...)."""

    exit_code = 2


class NothingFits(OomdoctorError):
    """The tool ran and found a blocking problem (no batch size fits, lint findings...)."""

    exit_code = 1
