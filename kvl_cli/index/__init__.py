"""Records -> a local full-text index (SQLite FTS5) -> search.

``build`` reads kvl's records (JSON Lines, Ray's part folders, buckets, ``.json`` sidecars) into
the index under a lock, so two ``kvl index`` at once take turns; ``open_index`` and
``search.search`` answer queries while an indexer writes (WAL). See docs/search.md.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from ..errors import DiskError
from .db import IndexUnavailable, connect
from .search import Hit, search, where_line
from .sources import find_sources
from .store import Indexer, Tally

__all__ = ["Hit", "IndexUnavailable", "Tally", "build", "index_path", "open_index", "search", "where_line"]

WAIT_NOTICE_S = 0.5  # how long before saying that another indexer holds the lock


def index_path(given: str | None) -> Path:
    """``--index FILE``, or the one in kvl's data folder."""
    if given:
        return Path(given).expanduser()
    from ..paths import index_file

    return index_file()


@contextlib.contextmanager
def _locked(path: Path, err: IO[str]) -> Iterator[None]:
    from filelock import FileLock, Timeout

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiskError(f"cannot make {path.parent}: {exc.strerror or exc}", hint="give another --index FILE") from None
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=WAIT_NOTICE_S)
    except Timeout:
        err.write(f"kvl: waiting for another kvl index writing {path}\n")
        err.flush()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build(paths: list[str], index: Path, err: IO[str], stdin: IO[bytes] | None = None,
          progress: Callable[[Tally], None] | None = None) -> Tally:
    """Index the records under ``paths`` (``-``: ``stdin``) into ``index`` (made if new); what was done.
    ``progress`` is told the tally after each transaction."""
    with _locked(index, err):
        conn = connect(index, create=True)
        try:
            return Indexer(conn, stdin, progress).index(find_sources(paths))
        finally:
            conn.close()


def open_index(index: Path) -> sqlite3.Connection:
    """The index for searching (InputError where there is none yet)."""
    return connect(index, create=False)
