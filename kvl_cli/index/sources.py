"""Where ``kvl index`` reads records from: JSON Lines files (``--json``, ``video --scenes --format
jsonl``), folders of them (Ray's ``--output`` parts, trees of ``.json`` sidecars), a bucket URI
(``s3://…``, anything pyarrow's filesystems open, as for ``--output``), or ``-`` for stdin.

A line that is not a kvl record (cut short, not JSON, not an object, no file and no text) is
damaged: it is counted and passed over, never the end of the run. A ``.json`` file that is JSON but
not a kvl record (Google Takeout's, a tool's settings) is not kvl's: passed over, counted apart.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import InputError, ModelError

# what a folder is searched for; hidden files (.kvl-round, a part being written) are not records
RECORD_SUFFIXES = (".jsonl", ".ndjson", ".json")
MAX_LINE_CHARS = 16 * 1024 * 1024  # as for --skip-done: longer is not a record


@dataclass(frozen=True)
class Source:
    """One file of records: its name (as the index remembers it), size and mtime (None: a stream)."""

    name: str
    size: int | None
    mtime_ns: int | None
    whole: bool  # a .json sidecar: one record, the whole file
    bucket: Any = None  # a bucket's file: (pyarrow filesystem, path); None: a local file (or stdin as "-")


@dataclass
class Damage:
    """Lines passed over, and the first of them (to say where)."""

    count: int = 0
    first: str = ""
    others: int = 0  # .json files that are JSON but not kvl's records (a photo library's own metadata)

    def add(self, where: str) -> None:
        self.count += 1
        self.first = self.first or where


URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(arg: str) -> bool:
    """A bucket (``s3://``, ``gs://``, …): what pyarrow's filesystems open."""
    return bool(URI.match(arg)) and not arg.startswith(("http://", "https://"))


def find_sources(paths: Iterable[str]) -> Iterator[Source]:
    """The record files named or under the folders named, each folder's files sorted."""
    for arg in paths:
        if arg == "-":
            yield Source("-", None, None, whole=False)
        elif is_uri(arg):
            yield from _bucket_sources(arg)
        else:
            yield from _local_sources(arg)


def _local_sources(arg: str) -> Iterator[Source]:
    path = Path(arg).expanduser()
    if path.is_dir():
        found = []
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [Path(folder, f) for f in files if f.endswith(RECORD_SUFFIXES) and not f.startswith(".")]
        for file in sorted(found):
            yield _local(file)
        return
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{arg}: not found", hint="give a JSON Lines file, a folder of them, or .json sidecars")
    yield _local(path)


def _local(path: Path) -> Source:
    try:
        st = path.stat()
    except OSError:  # a dangling link: said when it is read
        return Source(os.path.abspath(path), None, None, whole=path.suffix == ".json")
    return Source(os.path.abspath(path), st.st_size, st.st_mtime_ns, whole=path.suffix == ".json")


def _bucket_sources(uri: str) -> Iterator[Source]:
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise ModelError(f"{uri}: reading a bucket needs pyarrow", hint="pip install 'kvl[ray]' (or pyarrow)") from None
    try:
        fs, base = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{uri}: not found", hint="check the bucket and the path")
        infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except (OSError, ValueError) as exc:  # pyarrow: ArrowIOError is an OSError, ArrowInvalid a ValueError
        raise InputError(f"{uri}: cannot list it ({exc})", hint="check the URI and your credentials") from None
    scheme = uri.split("://", 1)[0]
    for i in sorted(infos, key=lambda i: i.path):
        name = i.path.rsplit("/", 1)[-1]
        if i.type == pafs.FileType.File and name.endswith(RECORD_SUFFIXES) and not name.startswith("."):
            yield Source(f"{scheme}://{i.path}", i.size, i.mtime_ns, whole=name.endswith(".json"), bucket=(fs, i.path))


@contextlib.contextmanager
def open_text(source: Source, stdin: IO[bytes] | None = None) -> Iterator[IO[str]]:
    """The source as text (bytes that are not UTF-8 replaced); stdin is left open."""
    if source.name == "-":
        f = io.TextIOWrapper(stdin or sys.stdin.buffer, encoding="utf-8", errors="replace")
        try:
            yield f
        finally:
            f.detach()
        return
    if source.bucket is not None:
        fs, path = source.bucket
        with io.TextIOWrapper(fs.open_input_stream(path), encoding="utf-8", errors="replace") as f:
            yield f
        return
    with open(source.name, encoding="utf-8", errors="replace") as f:
        yield f


def records(source: Source, damage: Damage,
            stdin: IO[bytes] | None = None) -> Iterator[tuple[dict[str, Any], str]]:
    """The source's records, each with its text as read; each damaged line counted in ``damage``
    (and passed over)."""
    with open_text(source, stdin) as f:
        if source.whole:
            text = f.read(MAX_LINE_CHARS + 1)
            rec = _record(text) if len(text) <= MAX_LINE_CHARS else None
            if rec is not None:
                yield rec, text
            elif _is_json(text):
                damage.others += 1
            else:
                damage.add(source.name)
            return
        for n, line in enumerate(_lines(f), 1):
            if line is None:
                damage.add(f"{source.name}:{n}")
                continue
            if not line.strip():
                continue
            rec = _record(line)
            if rec is None:
                damage.add(f"{source.name}:{n}")
            else:
                yield rec, line


def _lines(f: IO[str]) -> Iterator[str | None]:
    """The lines of ``f``; None for one longer than any record (read past in bounded pieces)."""
    while line := f.readline(MAX_LINE_CHARS):
        if len(line) < MAX_LINE_CHARS or line.endswith("\n"):
            yield line
            continue
        while (rest := f.readline(MAX_LINE_CHARS)) and not rest.endswith("\n"):
            pass
        yield None


def _record(text: str) -> dict[str, Any] | None:
    if not text.lstrip().startswith("{"):
        return None
    try:
        rec = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("input", rec.get("file")), str):
        return None
    return rec


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True
