"""The index file: SQLite with an FTS5 table over the records' text (the standard library's sqlite3).

``docs`` holds one row per record (its key, file, scene, page, start/end, task, model, date and
text, and a digest of them); ``fts`` is an external-content FTS5 table over ``docs.text`` kept in
step by the writer (``store``); ``sources`` remembers each file read (size and mtime) so that an
unchanged file is not read again. WAL mode: a search reads while an indexer writes; two indexers
take turns through a lock file beside the index (``filelock``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from types import ModuleType

from ..errors import DiskError, ExitCode, InputError, KvlError, UsageError

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS docs(
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    digest BLOB NOT NULL,
    file TEXT NOT NULL,
    scene INTEGER,
    page INTEGER,
    start REAL,
    "end" REAL,
    task TEXT,
    model TEXT,
    date TEXT,
    source TEXT,
    text TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    text, content='docs', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS sources(
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL
);
"""
MMAP_BYTES = 256 * 1024 * 1024
BUSY_TIMEOUT_S = 60.0  # a search waits this long for an indexer's commit at most


class IndexUnavailable(KvlError):
    """This Python's SQLite cannot hold the index (no FTS5)."""

    exit_code = ExitCode.MODEL


def sqlite_module() -> ModuleType:
    """The standard library's sqlite3."""
    return sqlite3


def require_fts5(module: ModuleType) -> None:
    """Exit 4 with what to install where this SQLite was built without FTS5."""
    conn = module.connect(":memory:")
    try:
        conn.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    except module.OperationalError:
        raise IndexUnavailable(
            f"this Python's SQLite ({module.sqlite_version}) was built without FTS5, which kvl index and kvl "
            "search need",
            hint="use a Python whose SQLite has FTS5 (python.org, Debian/Ubuntu, Homebrew and conda builds "
            "have it), e.g. `uv python install` or `conda install python`") from None
    finally:
        conn.close()


# SQLite's primary result codes that mean the disk, not the file: full, I/O, cannot open, read-only, no permission
DISK_CODES = {13: "the disk is full", 10: "a disk I/O error", 14: "cannot open it", 8: "it is read-only",
              3: "permission denied", 5: "another process holds it locked", 6: "another process holds it locked"}
DISK_WORDS = ("disk is full", "disk i/o error", "unable to open", "readonly", "read-only", "permission", "locked")


def sqlite_error(exc: sqlite3.Error, path: Path) -> KvlError:
    """What an SQLite error on the index at ``path`` means to the user: the disk (exit 7) or a file
    that is not a kvl index, or a damaged one (exit 3)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    disk = DISK_CODES.get(code & 0xFF) if isinstance(code, int) else None
    if disk is None and any(w in str(exc).lower() for w in DISK_WORDS):
        disk = str(exc)
    if disk is not None:
        return DiskError(f"cannot use the index {path}: {disk}",
                         hint="free some space, or give --index FILE in a folder you can write")
    return InputError(f"{path} is not a kvl index, or a damaged one ({exc})",
                      hint="give another --index FILE, or move it aside and index again")


def not_a_folder(path: Path) -> None:
    """UsageError where ``--index`` names a folder, or anything else that is there and not a plain file
    (``/dev/null``, a FIFO: SQLite would write its journal beside it, or wait)."""
    if path.is_dir():
        raise UsageError(f"--index {path} is a folder",
                         hint=f"give the index's file, e.g. --index {path / 'index.sqlite'}")
    if path.exists() and not path.is_file():
        raise UsageError(f"--index {path} is not a plain file", hint="give the index's file, e.g. --index lib.sqlite")


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """The index at ``path``, its schema made when ``create`` (else opened read-only); InputError where
    there is none, DiskError where the disk refuses it. A new index that could not be made whole is
    not left behind."""
    module = sqlite_module()
    require_fts5(module)
    not_a_folder(path)
    if not create and not path.is_file():
        raise InputError(f"no index at {path}",
                         hint="build one first with kvl index RECORDS.jsonl, or give --index FILE")
    new = create and not path.exists()
    try:
        conn = _open_write(module, path) if create else _open_read(module, path)
    except sqlite3.Error as exc:
        if new:
            _remove(path)
        raise sqlite_error(exc, path) from None
    try:
        if create:  # a search changes nothing (a read-only index can be searched)
            _check_schema(conn, path, create)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")  # a search process reads its pages without copying them
    except sqlite3.DatabaseError as exc:
        conn.close()
        if new:
            _remove(path)
        raise sqlite_error(exc, path) from None
    except BaseException:
        conn.close()
        if new:
            _remove(path)
        raise
    return conn


def _open_write(module: ModuleType, path: Path) -> sqlite3.Connection:
    conn: sqlite3.Connection = module.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    return conn


def _open_read(module: ModuleType, path: Path) -> sqlite3.Connection:
    """Read-only (``mode=ro``): a search never writes, and the index may sit on read-only media. Where
    SQLite cannot open even so (a WAL index in a folder it cannot make ``-shm`` in), the file is read
    as immutable: nobody can be writing it there."""
    uri = path.resolve().as_uri()
    conn: sqlite3.Connection = module.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        _check_schema(conn, path, False)
        return conn
    except sqlite3.OperationalError:
        conn.close()
        if os.access(path.parent, os.W_OK):
            raise
    conn = module.connect(f"{uri}?immutable=1", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        _check_schema(conn, path, False)
    except BaseException:
        conn.close()
        raise
    return conn


def _remove(path: Path) -> None:
    """A new index that failed as it was made (a full disk): gone, with its journal files."""
    for name in (str(path), f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with contextlib.suppress(OSError):
            os.unlink(name)


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}


def _check_schema(conn: sqlite3.Connection, path: Path, create: bool) -> None:
    """A kvl index, or (``create``) an empty database: anything else is refused before it is changed."""
    tables = _tables(conn)
    if (create and not tables) or {"docs", "fts", "sources"} <= tables:
        return
    raise InputError(f"{path} is not a kvl index", hint="give another --index FILE")
