"""Errors raised for problems in user data: the message names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """A user file or folder that cannot be used, with a one-line reason."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = Path(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class DamagedProjectError(DataError):
    """A project file (``.ielproj``) whose database is damaged: its integrity check failed,
    or SQLite reported a malformed page while it was in use."""


class Cancelled(Exception):
    """The user cancelled a long job: raised inside it where it stops (a progress callback,
    the review's first images) and caught by the job, which then simply ends. The one way
    a cancel travels inside core and the window's jobs."""
