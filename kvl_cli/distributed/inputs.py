"""Inputs for a cluster: what the driver lists, and how a worker on any node reads it.

Local arguments (files, directories, globs, http(s) URLs) expand as for one machine, to absolute
paths (a worker's working directory is not the driver's); a URI that a pyarrow filesystem reads
(``s3://``, ``gs://``, ``hdfs://``…) is listed through it, a directory recursively. Each input is
a row: its key (the label records carry as ``input`` or ``file``) and JSON with where to read it.
An input that fails its listing travels as a row with its error, so that its record is written
by a worker like every other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from ..errors import InputError, KvlError
from ..media.documents import PDF_EXTENSIONS, DocPage, DocumentOptions, probe
from ..media.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, InputRef, expand_inputs
from ..pages import Page, page_key, select_pages

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
Row = dict[str, Any]


def is_uri(arg: str) -> bool:
    """A filesystem URI (not http/https, which kvl fetches itself)."""
    return bool(URI.match(arg)) and not arg.startswith(("http://", "https://"))


def error_fields(exc: KvlError) -> dict[str, Any]:
    return {"error": str(exc), "exit_code": int(exc.exit_code)}


def list_inputs(args: list[str], *, video: bool) -> list[Row]:
    """Every argument's inputs, in order, once each (a name given twice runs once)."""
    rows: dict[str, Row] = {}
    for arg in args:
        if arg == "-":
            rows[arg] = {"key": arg, **error_fields(InputError("-: stdin cannot be sent to a cluster",
                                                               hint="save it to a file every node can read"))}
            continue
        try:
            found = list_uri(arg, video) if is_uri(arg) else _list_local(arg, video)
        except KvlError as exc:
            found = [{"key": arg, **error_fields(exc)}]
        for row in found:
            rows.setdefault(row["key"], row)
    return list(rows.values())


def _list_local(arg: str, video: bool) -> list[Row]:
    refs, problems = expand_inputs([arg], video=video)
    if problems:
        raise problems[0].error
    return [_local_row(ref) for ref in refs]


def _local_row(ref: InputRef) -> Row:
    if ref.url is not None:
        return {"key": ref.label, "url": ref.url}
    assert ref.path is not None
    return {"key": ref.label, "path": str(Path(ref.path).expanduser().absolute())}


def _media(name: str, video: bool) -> bool:
    exts = IMAGE_EXTENSIONS | (VIDEO_EXTENSIONS if video else PDF_EXTENSIONS)
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in exts


def list_uri(uri: str, video: bool) -> list[Row]:
    """A URI's file, or a directory's media files (recursively, sorted), through pyarrow."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            names = sorted(f.path for f in found if f.type == pafs.FileType.File and _media(f.path, video))
            return [_found_row(uri, path, name) for name in names]
    except (OSError, ValueError) as exc:  # pyarrow's errors are OSError or ArrowInvalid (a ValueError)
        raise InputError(f"{uri}: cannot list it ({str(exc).splitlines()[0]})",
                         hint="check the URI and the credentials for its store") from None
    if info.type != pafs.FileType.File:
        raise InputError(f"{uri}: not found", hint="check the URI")
    return [{"key": _label(uri), "uri": uri}]


def _label(uri: str) -> str:
    """The URI as records name it: without credentials (``KEY:SECRET@``) or query (``?endpoint_override=…``)."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{unquote(parts.path)}"


def _found_row(directory: str, base: str, name: str) -> Row:
    """A file listed under ``directory`` (``base``: the directory's path in its filesystem, ``name``:
    the file's). Its URI is the directory's with the rest of the name added, percent-encoded (an
    object key may hold a space, ``#``, ``?``, ``%`` or any letter, which a URI cannot hold raw), so
    that a worker reads it from the same store, with the directory's credentials and query; its
    label is the name as listed."""
    parts, prefix = urlsplit(directory), base.rstrip("/") + "/"
    if not name.startswith(prefix):  # not under the directory as pyarrow named it: the name alone
        return {"key": f"{parts.scheme}://{name}", "uri": f"{parts.scheme}://{quote(name, safe='/')}"}
    rest = name[len(prefix):]
    uri = parts._replace(path=parts.path.rstrip("/") + "/" + quote(rest, safe="/")).geturl()
    return {"key": _label(directory).rstrip("/") + "/" + rest, "uri": uri}


def read_uri(uri: str) -> bytes:
    """A URI's bytes (on the node that runs the input), within kvl's input size limit."""
    import pyarrow.fs as pafs

    from ..limits import max_input_bytes, oversized

    limit = max_input_bytes()
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        if fs.get_file_info(path).size > limit:
            raise oversized(uri, limit)
        with fs.open_input_stream(path) as f:
            return bytes(f.read())
    except (OSError, ValueError) as exc:
        raise InputError(f"{uri}: cannot read it ({str(exc).splitlines()[0]})",
                         hint="check the URI and the credentials for its store") from None


def page_rows(rows: list[Row], options: DocumentOptions) -> list[Row]:
    """Each PDF's row replaced by a row per selected page (``doc.pdf#page=3``), its page count read
    here, on the driver; a PDF that cannot be read stays one row, with its error."""
    out: list[Row] = []
    for row in rows:
        name = urlsplit(row["key"]).path if "://" in row["key"] else row["key"]
        if "error" in row or os.path.splitext(name)[1].lower() not in PDF_EXTENSIONS:
            out.append(row)
            continue
        try:
            ref = _ref(row)
            info, with_text = probe(ref.label, ref.source(), "pdf", options)
            numbers = select_pages(options.pages, info.pages, ref.label)
        except KvlError as exc:
            out.append({**row, **error_fields(exc)})
            continue
        out += [{**row, "key": page_key(row["key"], n), "doc": row["key"], "page": n, "pages": info.pages,
                 "text": options.text_layer and n in with_text} for n in numbers]
    return out


def _ref(row: Row) -> InputRef:
    label = str(row.get("doc", row["key"]))
    if "path" in row:
        return InputRef(label=label, path=Path(row["path"]))
    if "url" in row:
        return InputRef(label=label, url=row["url"])
    uri = row["uri"]
    return InputRef(label=label, reader=lambda: read_uri(uri))


def image_ref(row: Row, options: DocumentOptions | None = None) -> InputRef:
    """The row as the in-process batch's input: a path, a URL, or a URI read when its turn comes;
    a document's page row, that page (rendered as ``options`` say)."""
    ref = _ref(row)
    if "page" in row:
        options = options or DocumentOptions()
        ref.page = DocPage(Page(int(row["page"]), int(row["pages"])), "pdf", options.dpi, options.password,
                           bool(row.get("text")))
    return ref


def local_video(row: Row) -> Path:
    """A path the decoder can open: the file itself, or a copy of the URI's object kept on this
    node for the run (every scene of a video is sampled from the same copy)."""
    if "path" in row:
        return Path(row["path"])
    from ..media.images import fetch_url

    uri = row.get("uri") or row["url"]
    folder = Path(tempfile.gettempdir()) / "kvl-ray-media"
    folder.mkdir(exist_ok=True)
    suffix = os.path.splitext(urlsplit(uri).path)[1].lower()  # not the query's
    target = folder / (hashlib.sha256(uri.encode()).hexdigest()[:24] + suffix)
    if not target.exists():
        fd, tmp = tempfile.mkstemp(dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(read_uri(uri) if "uri" in row else fetch_url(uri))
        os.replace(tmp, target)  # two workers of one node may race: either copy is whole
    return target


def pack(row: Row) -> dict[str, str]:
    """A dataset row: the key, and the rest as JSON (one string column: no schema to unify)."""
    return {"key": row["key"], "row": json.dumps(row, ensure_ascii=False)}


def unpack(batch: dict[str, Any]) -> list[Row]:
    return [json.loads(str(r)) for r in batch["row"]]
