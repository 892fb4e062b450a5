"""One strict reader for every JSONL file the project reads, and the error it raises.

`read_jsonl` yields ``(where, row)`` pairs, ``where`` being ``file:line``, so that a caller checking a
row's fields names the same place; a malformed line or a line that is not a JSON object raises
`DataError` naming its file and line. ``repair=True`` is for append-only files a crash may have torn:
a last line without its newline is cut off the file first (durably), so a resumed writer appends after
whole lines only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from specialight.core.errors import DataError

logger = logging.getLogger(__name__)


def need(path: str | os.PathLike) -> Path:
    """``path`` as a `Path`, or `DataError` if no such file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing data file: {path} (expected the upstream repository's layout; see MANIFEST.md)")
    return path


def _cut_torn_tail(path: Path) -> None:
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning("%s: dropping a torn last line of %d bytes (a crash mid-write)", path, len(data) - end)
        with path.open("r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())


def read_jsonl(
    path: str | os.PathLike, fields: tuple[str, ...] = (), repair: bool = False
) -> Iterator[tuple[str, dict]]:
    """``(file:line, row)`` for each non-empty line of ``path``; every row must be a JSON object holding
    ``fields``. ``repair``: cut a torn last line off the file first (see the module docstring)."""
    path = need(path)
    if repair:
        _cut_torn_tail(path)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                where = f"{path}:{number}"
                yield where, parse_row(line, where, fields)


def parse_row(line: str, where: str, fields: tuple[str, ...] = ()) -> dict:
    """One JSONL line as a JSON object holding ``fields``, or `DataError` naming ``where`` (``file:line``)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: malformed JSON line ({err.msg} at column {err.colno})") from err
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [name for name in fields if name not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)} (fields present: {sorted(row)})")
    return row
