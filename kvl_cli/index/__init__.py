"""Records -> a local full-text index (SQLite FTS5) -> search.

``build`` reads kvl's records (JSON Lines, Ray's part folders, buckets, ``.json`` sidecars) into
the index under a lock, so two ``kvl index`` at once take turns; ``open_index`` and
``search.search`` answer queries while an indexer writes (WAL). See docs/search.md.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from ..errors import DiskError, InputError, UsageError
from ..safetext import one_line
from .db import IndexUnavailable, connect, not_a_folder, sqlite_error
from .search import Hit, search, where_line
from .sources import find_sources, is_uri
from .store import Indexer, Tally

__all__ = ["Hit", "IndexUnavailable", "Tally", "build", "index_path", "open_index", "search", "where_line"]

WAIT_NOTICE_S = 0.5  # how long before saying that another indexer holds the lock


def index_path(given: str | None) -> Path:
    """``--index FILE``, or the one in kvl's data folder."""
    if given is not None:
        if not given.strip():  # --index "$UNSET": never the default index by accident
            raise UsageError("--index is empty", hint="give the index's file, e.g. --index lib.sqlite")
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
    lock = FileLock(f"{path.resolve()}.lock")  # one lock for every name of the index (a link to it too)
    try:
        try:
            lock.acquire(timeout=WAIT_NOTICE_S)
        except Timeout:
            err.write(one_line(f"kvl: waiting for another kvl index writing {path}") + "\n")
            err.flush()
            lock.acquire()
    except OSError as exc:  # a read-only folder: the lock file beside the index cannot be made
        raise DiskError(f"cannot write beside the index {path}: {exc.strerror or exc}",
                        hint="give --index FILE in a folder you can write") from None
    try:
        yield
    finally:
        lock.release()


def build(paths: list[str], index: Path, err: IO[str], stdin: IO[bytes] | None = None,
          progress: Callable[[Tally], None] | None = None) -> Tally:
    """Index the records under ``paths`` (``-``: ``stdin``) into ``index`` (made if new); what was done.
    ``progress`` is told the tally after each transaction. A PATH that is missing is said in the
    tally's ``missing`` and the others are indexed; when every PATH is missing, nothing is made."""
    _some_path_there(paths)
    not_a_folder(index)
    with _locked(index, err):
        conn = connect(index, create=True)
        try:
            own = {f"{os.path.abspath(index)}{end}" for end in ("", "-wal", "-shm", "-journal", ".lock")}
            return Indexer(conn, stdin, progress).index(s for s in find_sources(paths) if s.name not in own)
        except sqlite3.Error as exc:  # a full disk mid-way: what was committed stays
            raise sqlite_error(exc, index) from None
        finally:
            conn.close()


def _some_path_there(paths: list[str]) -> None:
    """InputError (exit 3) when every PATH is a local file or folder that is not there."""
    missing = [p for p in paths if p != "-" and not is_uri(p) and not os.path.lexists(os.path.expanduser(p))]
    if paths and len(missing) == len(paths):
        raise InputError(f"{', '.join(missing)}: not found",
                         hint="give a JSON Lines file, a folder of them, or .json sidecars")


def open_index(index: Path) -> sqlite3.Connection:
    """The index for searching (InputError where there is none yet)."""
    return connect(index, create=False)
