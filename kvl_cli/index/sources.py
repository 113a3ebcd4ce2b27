"""Where ``kvl index`` reads records from: JSON Lines files (``--json``, ``video --scenes --format
jsonl``), folders of them (Ray's ``--output`` parts, trees of ``.json`` sidecars), a bucket URI
(``s3://…``, anything pyarrow's filesystems open, as for ``--output``), or ``-`` for stdin.

A line that is not a kvl record (cut short, not JSON, not an object, no file and no text) is
damaged: it is counted and passed over, never the end of the run; so is one whose times or numbers
are not (NaN, Infinity, 1e400). A ``.json`` file that is JSON but not a kvl record (Google Takeout's,
a tool's settings) is not kvl's: passed over, counted apart; one holding JSON Lines is read by lines.
A relative name is made whole against where its records are (``Resolver``). In a folder only plain
files are read (a FIFO or /dev/zero never ends); a PATH that is missing is a ``Source`` with a
``problem``, said while the others are indexed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from ..errors import ModelError

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
    problem: str | None = None  # a PATH that cannot be read at all (missing): said, and the others indexed


@dataclass
class Damage:
    """Lines passed over, and the first of them (to say where)."""

    count: int = 0
    first: str = ""
    others: int = 0  # .json files that are JSON but not kvl's records (a photo library's own metadata)
    special: int = 0  # what a folder holds that is not a plain file (a FIFO, a link to a device): never read

    def add(self, where: str) -> None:
        self.count += 1
        self.first = self.first or where


URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
SIMPLE = re.compile(r"(?:[^/.:][^/:]*/)*[^/.:][^/:]*\Z")  # a/b.jpg: no "." or ".." part, no "//", no scheme
SPECIAL = "special"  # Source.problem of a folder's FIFO, device or socket: passed over and counted


def is_uri(arg: str) -> bool:
    """A bucket (``s3://``, ``gs://``, …): what pyarrow's filesystems open."""
    return bool(URI.match(arg)) and not arg.startswith(("http://", "https://"))


def current_folder() -> str:
    """The current folder; "" where it is gone (deleted under the shell): names stay as they are."""
    try:
        return os.getcwd()
    except OSError:
        return ""


class Resolver:
    """A record's relative ``input`` or ``file`` made whole against where its records are: the folder of
    the JSON Lines file (``kvl caption --json photos/ > caps.jsonl`` names ``photos/a.jpg`` from
    there), the folder of a ``.json`` sidecar (which sits beside its input: the input's own name
    there), the current folder for stdin. So ``a.jpg`` in two folders' records is two files."""

    def __init__(self, source: Source) -> None:
        if source.name == "-":
            self.scheme, self.base = "", current_folder()
        elif source.bucket is not None:
            self.scheme, path = source.name.split("://", 1)
            self.base = posixpath.dirname(path)
        else:
            self.scheme, self.base = "", os.path.dirname(source.name)
        self.prefix = self.base.rstrip("/") + "/" if self.base else ""

    def sidecar(self, name: str) -> str:
        """The input's name a ``.json`` sidecar (the source, beside its input) holds, made whole."""
        return self(name, sidecar=True)

    def __call__(self, name: str, sidecar: bool = False) -> str:
        """``name`` made whole; ``sidecar``: it is the input of the ``.json`` sidecar that is the source."""
        if not sidecar and not self.scheme and name[:1] not in ("/", "~", ".", "") and SIMPLE.match(name):
            return self.prefix + name  # the common case, without join and normpath (a record costs ~10 µs)
        if URI.match(name):
            return name
        if name.startswith("~") and not self.scheme:
            name = os.path.expanduser(name)  # "~/a.jpg" as a --from list named it: a home folder, not ./~
        if name.startswith("/"):
            return os.path.normpath(name) if not self.scheme else name
        if sidecar:
            name = posixpath.basename(name)
        if self.scheme:
            return f"{self.scheme}://{posixpath.normpath(posixpath.join(self.base, name))}"
        return os.path.normpath(os.path.join(self.base, name))


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
        unreadable: list[OSError] = []  # a folder kvl may not list: said, never passed over in silence
        for folder, dirs, files in os.walk(path, onerror=unreadable.append):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [Path(folder, f) for f in files if f.endswith(RECORD_SUFFIXES) and not f.startswith(".")]
        for exc in unreadable:
            yield Source(str(exc.filename or path), None, None, whole=False,
                         problem=f"cannot read this folder: {exc.strerror or exc}")
        for file in sorted(found):
            yield _local(file, named=False)
        return
    if not path.exists() and not path.is_symlink():
        yield Source(arg, None, None, whole=False, problem="not found")
        return
    yield _local(path, named=True)


def _local(path: Path, *, named: bool) -> Source:
    """A file of records. In a folder only plain files are read: a FIFO would wait for a writer forever
    and a link to /dev/zero never ends. A file named on the command line may be a pipe as well
    (``kvl index <(…)``), never a device."""
    whole = path.suffix == ".json"
    try:
        st = path.stat()
    except OSError:  # a dangling link: said when it is read
        return Source(os.path.abspath(path), None, None, whole=whole)
    if stat.S_ISFIFO(st.st_mode) and named:
        return Source(os.path.abspath(path), None, None, whole=whole)  # read once, never remembered as unchanged
    if not stat.S_ISREG(st.st_mode):
        return Source(os.path.abspath(path), None, None, whole=whole, problem="not a file" if named else SPECIAL)
    return Source(os.path.abspath(path), st.st_size, st.st_mtime_ns, whole=whole)


def _bucket_sources(uri: str) -> Iterator[Source]:
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise ModelError(f"{uri}: reading a bucket needs pyarrow", hint="pip install 'kvl[ray]' (or pyarrow)") from None
    try:
        fs, base = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            yield Source(uri, None, None, whole=False, problem="not found")
            return
        infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except (OSError, ValueError) as exc:  # pyarrow: ArrowIOError is an OSError, ArrowInvalid a ValueError
        yield Source(uri, None, None, whole=False,
                     problem=f"cannot list it ({exc}): check the URI and your credentials")
        return
    scheme = uri.split("://", 1)[0]
    for i in sorted(infos, key=lambda i: i.path):
        name = i.path.rsplit("/", 1)[-1]
        if i.type == pafs.FileType.File and name.endswith(RECORD_SUFFIXES) and not name.startswith("."):
            yield Source(f"{scheme}://{i.path}", i.size, i.mtime_ns, whole=name.endswith(".json"), bucket=(fs, i.path))


@contextlib.contextmanager
def open_text(source: Source, stdin: IO[bytes] | None = None) -> Iterator[IO[str]]:
    """The source as text (bytes that are not UTF-8 replaced, a byte order mark at its start dropped);
    stdin is left open."""
    if source.name == "-":
        raw = stdin or sys.stdin.buffer
        f = io.TextIOWrapper(raw, encoding=_encoding(raw), errors="replace")
        try:
            yield f
        finally:
            f.detach()
        return
    if source.bucket is not None:
        fs, path = source.bucket
        with io.TextIOWrapper(fs.open_input_stream(path), encoding="utf-8-sig", errors="replace") as f:
            yield f
        return
    with open(source.name, "rb") as raw, io.TextIOWrapper(raw, encoding=_encoding(raw), errors="replace") as f:
        yield f


def _encoding(raw: IO[bytes]) -> str:
    """UTF-16 where the bytes start with its byte order mark (what Windows PowerShell 5's ``>`` writes),
    else UTF-8 (its own byte order mark dropped)."""
    peek = getattr(raw, "peek", None)
    head = peek(2)[:2] if peek is not None else b""
    return "utf-16" if head in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"


def records(source: Source, damage: Damage,
            stdin: IO[bytes] | None = None) -> Iterator[tuple[dict[str, Any], str, bool]]:
    """The source's records, each with its text as read and whether it is the whole file (a sidecar);
    each damaged line counted in ``damage`` (and passed over). A ``.json`` file is one record (a
    sidecar), or else JSON Lines saved under that name (its first line a record), or else not kvl's."""
    with open_text(source, stdin) as f:
        lines: _ReadsLines = f
        if source.whole:
            text = f.read(MAX_LINE_CHARS + 1)
            if len(text) <= MAX_LINE_CHARS:
                rec = _record(text)
                if rec is not None:
                    yield rec, text, True
                    return
                if _is_json(text):
                    damage.others += 1
                    return
            if _record(text.lstrip().split("\n", 1)[0]) is None:  # its first line (after blank ones)
                damage.add(source.name)
                return
            lines = _Prefixed(text, f)  # JSON Lines: what was read, then the rest
        for n, line in enumerate(_lines(lines), 1):
            if line is None:
                damage.add(f"{source.name}:{n}")
                continue
            if not line.strip():
                continue
            rec = _record(line)
            if rec is None:
                damage.add(f"{source.name}:{n}")
            else:
                yield rec, line, False


class _ReadsLines(Protocol):
    def readline(self, size: int = -1, /) -> str: ...


class _Prefixed:
    """``head`` (text already read from ``rest``), then ``rest``: read by lines."""

    def __init__(self, head: str, rest: IO[str]) -> None:
        self.head = io.StringIO(head)
        self.rest = rest

    def readline(self, limit: int = -1, /) -> str:
        line = self.head.readline(limit)
        if line.endswith("\n") or (limit >= 0 and len(line) >= limit):
            return line
        return line + self.rest.readline(limit - len(line) if limit >= 0 else -1)


def _lines(f: _ReadsLines) -> Iterator[str | None]:
    """The lines of ``f``; None for one longer than any record (read past in bounded pieces)."""
    while line := f.readline(MAX_LINE_CHARS):
        if len(line) < MAX_LINE_CHARS or line.endswith("\n"):
            yield line
            continue
        while (rest := f.readline(MAX_LINE_CHARS)) and not rest.endswith("\n"):
            pass
        yield None


MAX_SECONDS = 1e9  # a start or end time past 31 years is not a scene's
MAX_NUMBER = 2 ** 53  # a scene or page number past what a double (and SQLite's INTEGER) holds exactly
LONE_SURROGATE_ESCAPE = re.compile(r"\\[uU][dD][89a-fA-F]")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` as SQLite can keep it: a lone surrogate (a file name's byte that is not UTF-8, as Python
    decodes names and arguments: U+DC80-U+DCFF) written ``\\xff`` as kvl shows it, any other U+FFFD;
    the same bytes typed in a search's ``--path`` come out the same."""
    if LONE_SURROGATE.search(text) is None:
        return text
    return LONE_SURROGATE.sub(_stand_in, text)


def _stand_in(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else "\ufffd"


def _record(text: str) -> dict[str, Any] | None:
    """The kvl record ``text`` holds; None where it is damaged: not a JSON object, no input or file
    name, a time that is not a time (NaN, Infinity, negative, 1e400) or a number past any count."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        rec = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(rec, dict):
        return None
    name = record_name(rec)
    if name is None or not _numbers_sane(rec):
        return None
    if LONE_SURROGATE_ESCAPE.search(text):  # an escaped lone surrogate: a str SQLite cannot encode
        rec = {k: valid_text(v) if isinstance(v, str) else v for k, v in rec.items()}
    return rec


def record_name(rec: dict[str, Any]) -> str | None:
    """What a record is of: a scene's ``file``, else an image's ``input`` (None: neither is a name)."""
    for key in ("file", "input"):
        name = rec.get(key)
        if isinstance(name, str) and name:
            return name
    return None


NUMBERS = (int, float)  # by type: a bool is no number here
BOUNDS = (("start", 0, MAX_SECONDS), ("end", 0, MAX_SECONDS), ("scene", -MAX_NUMBER, MAX_NUMBER),
          ("page", -MAX_NUMBER, MAX_NUMBER))


def _numbers_sane(rec: dict[str, Any]) -> bool:
    """Each of the record's numbers in its bounds; NaN and the infinities fail every comparison, and an
    int is compared whole (10**400 too). What is not a number the index does not keep: no damage."""
    for key, low, high in BOUNDS:
        value = rec.get(key)
        if value is not None and type(value) in NUMBERS and not low <= value <= high:
            return False
    return True


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True
