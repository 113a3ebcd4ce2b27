"""The index file: SQLite with an FTS5 table over the records' text (the standard library's sqlite3).

``docs`` holds one row per record (its key, file, scene, page, start/end, task, model, date and
text, and a digest of them); ``fts`` is an external-content FTS5 table over ``docs.text`` kept in
step by the writer (``store``); ``sources`` remembers each file read (size and mtime) so that an
unchanged file is not read again. WAL mode: a search reads while an indexer writes; two indexers
take turns through a lock file beside the index (``filelock``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import ModuleType

from ..errors import ExitCode, InputError, KvlError

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


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """The index at ``path``, its schema made when ``create``; InputError where there is none."""
    module = sqlite_module()
    require_fts5(module)
    if not create and not path.is_file():
        raise InputError(f"no index at {path}",
                         hint="build one first with kvl index RECORDS.jsonl, or give --index FILE")
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    conn: sqlite3.Connection = module.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        _check_schema(conn, path, create)
        conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")  # a search process reads its pages without copying them
        if create:  # a search changes nothing (a read-only index can be searched)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise InputError(f"{path} is not a kvl index ({exc})", hint="give another --index FILE") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}


def _check_schema(conn: sqlite3.Connection, path: Path, create: bool) -> None:
    """A kvl index, or (``create``) an empty database: anything else is refused before it is changed."""
    tables = _tables(conn)
    if (create and not tables) or {"docs", "fts", "sources"} <= tables:
        return
    raise InputError(f"{path} is not a kvl index", hint="give another --index FILE")
