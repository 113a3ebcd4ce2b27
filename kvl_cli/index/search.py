"""Searching the index: what a person types made into a safe FTS5 query, hits ranked by BM25.

The query language is deliberately small: words (all must match), ``"quoted phrases"``, ``word*``
for a prefix, and ``OR`` between two terms. Every term is quoted before it reaches FTS5, so the
characters FTS5's own syntax gives meaning to (``"``, ``*``, ``:``, ``^``, ``(``, ``-``, ``+``,
``NEAR``) are searched as text and never break the query.

Hits are ranked by BM25 (FTS5's ``rank``), among the newest ``RANK_WINDOW`` records that match.
"""

from __future__ import annotations

import heapq
import math
import os
import re
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UsageError
from .sources import MAX_SECONDS, current_folder, valid_text
from .words import segment, unsegment

# snippet markers: control characters no caption holds (kvl's records escape them), replaced when shown
MARK_ON, MARK_OFF = "\x02", "\x03"
SNIPPET_TOKENS = 16
# BM25 is computed for every record that matches, about a microsecond each: a word in one record of
# six (a library of a million captions: "man", "table") would cost 150 ms and more. A query is
# ranked among its newest RANK_WINDOW matches (the most recently indexed); a narrower query (two
# words, a phrase, --task, --path) is ranked over all its matches.
RANK_WINDOW = 10_000
MAX_GLOB = 4096  # SQLite refuses a GLOB pattern past 50,000 bytes; no path is longer than PATH_MAX (4096)
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
TERM = re.compile(r'"([^"]*)"?|(\S+)')


@dataclass(frozen=True)
class Hit:
    file: str
    scene: int | None
    page: int | None
    start: float | None
    end: float | None
    task: str | None
    model: str | None
    date: str | None
    score: float
    snippet: str  # the matched words between MARK_ON and MARK_OFF
    text: str

    def to_dict(self, mark: tuple[str, str] = ("**", "**")) -> dict[str, Any]:
        d = asdict(self)
        d["snippet"] = self.snippet.replace(MARK_ON, mark[0]).replace(MARK_OFF, mark[1])
        d["score"] = round(self.score, 4)
        d["start"], d["end"] = _seconds(self.start), _seconds(self.end)  # JSON has no NaN nor Infinity
        return d


def _seconds(value: Any) -> float | None:
    """A time as it can be shown; None for what is not one (an index written before times were checked)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
            0 <= value <= MAX_SECONDS:
        return float(value)
    return None


def shown(query: str, most: int = 80) -> str:
    """The query as a message quotes it: ``repr``, cut to ``most`` characters."""
    return repr(query) if len(query) <= most else repr(query[:most]) + f"… ({len(query):,} characters)"


def _quote(text: str) -> str:
    return '"' + segment(text).replace('"', '""') + '"'


def fts_query(query: str) -> str:
    """The user's query as an FTS5 expression in which every term is a quoted string."""
    parts: list[str] = []
    for m in TERM.finditer(query.replace("\x00", " ")):  # SQLite reads a NUL as the end of the query
        phrase, word = m.group(1), m.group(2)
        if phrase is not None:
            if phrase.strip():
                parts.append(_quote(phrase))
        elif word == "OR" and parts and parts[-1] != "OR":
            parts.append("OR")
        elif word.endswith("*") and word.rstrip("*"):
            parts.append(_quote(word.rstrip("*")) + "*")
        elif word != "OR":
            parts.append(_quote(word))
    while parts and parts[-1] == "OR":
        parts.pop()
    if not parts:
        raise UsageError(f"nothing to search for in {shown(query)}",
                         hint='give words, e.g. kvl search "whiteboard diagram"')
    return " ".join(parts)


def search(conn: sqlite3.Connection, query: str, *, limit: int = 10, task: str | None = None,
           path: str | None = None) -> list[Hit]:
    """The best ``limit`` hits for ``query`` (BM25: lower scores are better), optionally of one task
    and with the file matching the glob ``path``. Ranked first, then only the hits shown get their
    snippet (a snippet for every match would cost more than the ranking)."""
    query = valid_text(query)  # bytes of argv that are not UTF-8 (lone surrogates), as the index keeps them
    task, path = (None if t is None else valid_text(t) for t in (task, path))
    match = fts_query(query)
    if path is not None and len(path) > MAX_GLOB:
        raise UsageError(f"--path is {len(path):,} characters long: longer than any file's path ({MAX_GLOB:,})",
                         hint="give a shorter GLOB, e.g. 'talks/*.mp4'")
    try:
        ranked = _ranked(conn, match, limit, task, path)
        if not ranked:
            return []
        marks = ",".join("?" * len(ranked))
        rows = conn.execute(
            f"SELECT fts.rowid, d.file, d.scene, d.page, d.start, d.\"end\", d.task, d.model, d.date, "
            f"snippet(fts, 0, '{MARK_ON}', '{MARK_OFF}', '…', {SNIPPET_TOKENS}), d.text "
            f"FROM fts JOIN docs d ON d.id = fts.rowid WHERE fts MATCH ? AND fts.rowid IN ({marks})",
            (match, *(r[0] for r in ranked))).fetchall()
    except sqlite3.OperationalError as exc:
        if "fts5" in str(exc) or "syntax" in str(exc) or "unterminated" in str(exc):
            raise UsageError(f"cannot search for {shown(query)}: {exc}",
                             hint="put the words in double quotes") from None
        raise
    found = {row[0]: row for row in rows}
    return [_hit(found[i], score) for i, score in ranked if i in found]


def _hit(row: tuple[Any, ...], score: float) -> Hit:
    _, file, scene, page, start, end, task, model, date, snippet, text = row
    return Hit(file, scene, page, start, end, task, model, date, score, unsegment(snippet), unsegment(text))


def _ranked(conn: sqlite3.Connection, match: str, limit: int, task: str | None,
            path: str | None) -> list[tuple[int, float]]:
    """(rowid, BM25) of the best ``limit`` among the newest ``RANK_WINDOW`` matches, in one pass over
    them (FTS5 walks its matches newest first and stops at the window)."""
    where, args = ["fts MATCH ?"], [match]
    if task:
        where.append("d.task = ?")
        args.append(task)
    if path:  # a relative GLOB ("talks/*.mp4") matches the end of a path: files are kept whole
        if path.startswith(("./", "../")) and (here := current_folder()):
            path = os.path.normpath(os.path.join(here, path))  # from the current folder: a whole path
        where.append("(d.file GLOB ? OR d.file GLOB ?)")
        args += [path, path if path.startswith(("/", "*")) or URI.match(path) else f"*/{path}"]
    join = "JOIN docs d ON d.id = fts.rowid " if task or path else ""
    rows = conn.execute(f"SELECT fts.rowid, fts.rank FROM fts {join}WHERE {' AND '.join(where)} "
                        "ORDER BY fts.rowid DESC LIMIT ?", (*args, RANK_WINDOW))
    return heapq.nsmallest(limit, rows, key=lambda row: row[1])


def clock(seconds: float) -> str:
    """``00:01:05``; ``?`` for what is not a time."""
    if _seconds(seconds) is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def where_line(hit: Hit, here: str | None = None) -> str:
    """``talk.mp4 @ 00:01:05–00:01:12`` for a scene, ``scan.pdf p. 3`` for a page, else the file; a
    file under the folder ``here`` named from there (as a person types it after ``mpv``)."""
    line = hit.file
    if here and line.startswith(here.rstrip("/") + "/"):
        line = line[len(here.rstrip("/")) + 1:]
    if hit.start is not None:
        line += f" @ {clock(hit.start)}" + (f"–{clock(hit.end)}" if hit.end is not None else "")
    if hit.page is not None:
        line += f" p. {hit.page}"
    return line
