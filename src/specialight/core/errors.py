"""The error a user's input earns: the CLI prints its message as one line and exits with status 2."""

from __future__ import annotations


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file (and line) and what was expected."""
