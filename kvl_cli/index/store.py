"""Records into the index, incrementally: a record is indexed once, a changed one replaces its entry.

A record's key is what it describes: its task, its file (``file``, or ``input`` for an image), and
its scene or page; its digest is of the record as written. Indexing the same records again changes
nothing; a record with the key of one indexed before but another digest (the image captioned again)
replaces it, in ``docs`` and in the FTS table. A file read whole and
without damage is remembered by size and mtime, so an unchanged file is not even read again.
Records are written in transactions of ``BATCH`` records, across files (a tree of one-record
sidecars is not a transaction each): Ctrl-C keeps what was committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any, NamedTuple

from .sources import SPECIAL, Damage, Resolver, Source, record_name, records, valid_text
from .words import segment

BATCH = 20_000
LOOKUP = 500  # keys per lookup query (under SQLite's limit on variables)


class Doc(NamedTuple):
    """One searchable record, as the ``docs`` table holds it (in its column order, after ``id``)."""

    key: str
    digest: bytes
    file: str
    scene: int | None
    page: int | None
    start: float | None
    end: float | None
    task: str | None
    model: str | None
    date: str | None
    source: str
    text: str


@dataclass
class Tally:
    files: int = 0
    unchanged_files: int = 0
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    failed: int = 0  # records of inputs that failed: nothing to search
    missing: list[str] = field(default_factory=list)  # PATHs that could not be read at all (and why)
    damage: Damage = field(default_factory=Damage)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def to_doc(rec: dict[str, Any], raw: str, source: str, default_date: str | None,
           resolve: Callable[[str], str] = str) -> Doc | None:
    """The record (``raw``: its text as read) as a ``Doc``, its file made whole by ``resolve``; None for
    a failed input's record or one with no text."""
    if rec.get("error") is not None:
        return None
    text = _str(rec.get("answer")) or _str(rec.get("caption")) or _str(rec.get("text"))
    if text is None:
        return None
    file = valid_text(resolve(record_name(rec) or ""))  # ``records`` passes only records with a name
    scene, page = _int(rec.get("scene")), _int(rec.get("page"))
    task = _str(rec.get("task")) or ("video" if scene is not None else None)
    key = f"{task or ''}\x1f{file}\x1f{'' if scene is None else scene}\x1f{'' if page is None else page}"
    # the digest is of the record as written: the same line read again (a file a run appended to,
    # whose mtime, the date of records without one, has changed) is unchanged; a record written
    # again (the input captioned again) replaces the old one
    digest = hashlib.blake2b(raw.strip().encode("utf-8", "replace"), digest_size=12).digest()
    return Doc(key, digest, file, scene, page, _float(rec.get("start")), _float(rec.get("end")), task,
               _str(rec.get("model")), _str(rec.get("date")) or default_date, source, segment(_unmarked(text)))


def _unmarked(text: str) -> str:
    """``text`` without the two control characters a search marks its matches with (a record escapes
    them, so only a hand-made one holds them): a snippet's marks are always the search's own."""
    if "\x02" in text or "\x03" in text:
        return text.replace("\x02", "").replace("\x03", "")
    return text


def _mtime_date(mtime_ns: int | None) -> str | None:
    if mtime_ns is None:
        return None
    return datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Indexer:
    """Writes into one index connection (the caller holds the index's lock)."""

    def __init__(self, conn: sqlite3.Connection, stdin: IO[bytes] | None = None,
                 progress: Callable[[Tally], None] | None = None) -> None:
        self.conn = conn
        self.stdin = stdin  # what "-" reads
        self.progress = progress  # called after each transaction
        self.tally = Tally()
        # records of many files go into one transaction (a tree of .json sidecars: one record each), and a
        # file read whole is remembered in the transaction that holds its last records
        self.batch: dict[str, Doc] = {}
        self.read_files: list[tuple[str, int | None, int]] = []

    def index(self, sources: Iterable[Source]) -> Tally:
        for source in sources:
            if source.problem == SPECIAL:
                self.tally.damage.special += 1
                continue
            if source.problem is not None:
                self.tally.missing.append(f"{source.name}: {source.problem}")
                continue
            self.tally.files += 1
            if self._unchanged(source):
                self.tally.unchanged_files += 1
                continue
            before = self.tally.damage.count
            try:
                self._read(source)
            except OSError as exc:  # unreadable, or a bucket gone mid-read: what was committed stays
                self.tally.damage.add(f"{source.name}: {exc.strerror or exc}")
            if self.tally.damage.count == before and source.mtime_ns is not None:
                self.read_files.append((valid_text(source.name), source.size, source.mtime_ns))
        self._flush()
        return self.tally

    def _unchanged(self, source: Source) -> bool:
        if source.mtime_ns is None:
            return False
        row = self.conn.execute("SELECT size, mtime_ns FROM sources WHERE path = ?",
                                (valid_text(source.name),)).fetchone()
        return row is not None and tuple(row) == (source.size, source.mtime_ns)

    def _read(self, source: Source) -> None:
        date = _mtime_date(source.mtime_ns)
        resolve = Resolver(source)
        name = valid_text(source.name)  # a file name's bytes that are not UTF-8: as SQLite can keep them
        for rec, raw, whole in records(source, self.tally.damage, self.stdin):
            doc = to_doc(rec, raw, name, date, resolve.sidecar if whole else resolve)
            if doc is None:
                self.tally.failed += rec.get("error") is not None
                continue
            self.batch[doc.key] = doc  # the same key twice in a batch: the later record wins
            if len(self.batch) >= BATCH:
                self._flush()

    def _flush(self) -> None:
        if self.batch or self.read_files:
            docs, self.batch = list(self.batch.values()), {}
            self.write(docs)

    def write(self, docs: list[Doc]) -> None:
        """One transaction: new docs added, changed ones replaced, the same ones left; the files read
        whole since the last one remembered. What is there is looked up inside the transaction (under
        SQLite's write lock), so that a writer kvl's lock file did not keep out (another name for the
        same index) never collides with this one."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            new, changed, same = self._sorted(docs)
            c.executemany("INSERT INTO docs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", new)
            c.executemany("INSERT INTO fts(rowid, text) VALUES (?, ?)", ((row[0], row[-1]) for row in new))
            for (doc_id, _, old_text), doc in changed:
                c.execute("INSERT INTO fts(fts, rowid, text) VALUES ('delete', ?, ?)", (doc_id, old_text))
                c.execute("DELETE FROM docs WHERE id = ?", (doc_id,))
                c.execute("INSERT INTO docs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", (doc_id, *doc))
                c.execute("INSERT INTO fts(rowid, text) VALUES (?, ?)", (doc_id, doc.text))
            c.executemany("INSERT OR REPLACE INTO sources(path, size, mtime_ns) VALUES (?, ?, ?)", self.read_files)
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:  # SQLite rolled back already after some errors (a full disk)
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
            raise
        self.read_files = []
        self.tally.added += len(new)
        self.tally.replaced += len(changed)
        self.tally.unchanged += same
        if self.progress is not None:
            self.progress(self.tally)

    def _sorted(self, docs: list[Doc]) -> tuple[list[tuple[Any, ...]], list[tuple[tuple[int, bytes, str], Doc]], int]:
        """The docs that are new (as rows, with their ids), changed (with what they replace), the same."""
        old = dict(self._existing([d.key for d in docs]))
        next_id = (self.conn.execute("SELECT max(id) FROM docs").fetchone()[0] or 0) + 1
        new, changed, same = [], [], 0
        for doc in docs:
            was = old.get(doc.key)
            if was is None:
                new.append((next_id, *doc))
                next_id += 1
            elif was[1] != doc.digest:
                changed.append((was, doc))
            else:
                same += 1
        return new, changed, same

    def _existing(self, keys: list[str]) -> Iterator[tuple[str, tuple[int, bytes, str]]]:
        for i in range(0, len(keys), LOOKUP):
            chunk = keys[i:i + LOOKUP]
            marks = ",".join("?" * len(chunk))
            for key, doc_id, digest, text in self.conn.execute(
                    f"SELECT key, id, digest, text FROM docs WHERE key IN ({marks})", chunk):
                yield key, (doc_id, digest, text)
