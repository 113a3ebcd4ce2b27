"""Where an input's sidecar goes: beside it (``photo.jpg`` -> ``photo.txt``), or under
``--sidecar-dir DIR`` mirroring the input's path (for read-only media and URLs).

Under a folder, a path inside the current directory keeps its relative path (``photos/a.jpg`` ->
``DIR/photos/a.txt``), any other its absolute path without the root (``/mnt/x/a.jpg`` ->
``DIR/mnt/x/a.txt``), and a URL its host and path (``DIR/example.org/img/a.txt``): the same
input always has the same sidecar, so a rerun finds it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from ..errors import UsageError

KINDS = ("txt", "json", "xmp")


URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(label: str) -> bool:
    """http(s), or a bucket's URI (s3://…): a name with no folder on this machine beside it."""
    return bool(URI.match(label))


def sidecar_path(label: str, kind: str, folder: str | None, page: int | None = None) -> Path:
    """The ``kind`` sidecar of the input named ``label`` (of its page ``page``, for a document:
    ``doc.p3.txt``, one per page, each the page's resume mark); UsageError where it has none."""
    if label == "-":
        raise UsageError("--sidecar: an image read from stdin has no name to write a sidecar for",
                         hint="give the file's path instead of piping it in")
    if is_url(label):
        if folder is None:
            raise UsageError(f"--sidecar: {label} is a URL: there is no folder here beside it",
                             hint="add --sidecar-dir DIR")
        base = Path(folder).expanduser() / _url_part(label)
    elif folder is None:
        base = Path(os.path.normpath(os.path.expanduser(label)))  # "~/a.png" (quoted, --from): where it is read
    else:
        base = Path(folder).expanduser() / _mirrored(label)
    stem = (base.stem if base.suffix else base.name) + (f".p{page}" if page is not None else "")
    return base.with_name(f"{stem}.{kind}")


def _mirrored(label: str) -> Path:
    path = Path(os.path.abspath(os.path.expanduser(label)))
    here = Path.cwd()
    try:
        return path.relative_to(here)
    except ValueError:
        return path.relative_to(path.anchor)


def _url_part(label: str) -> Path:
    url = urlsplit(label)
    host = url.hostname if url.hostname not in (None, "", ".", "..") else "_"  # http://../a.png stays under DIR
    parts = [p for p in PurePosixPath(unquote(url.path)).parts if p not in ("/", ".", "..")]
    return Path(host, *parts) if parts else Path(host, "index")
