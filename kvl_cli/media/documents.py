"""Documents (PDFs, multi-page TIFFs) as pages, on kvl's side of the decoder process (``sandbox``).

``document_kind`` tells a document from an image (by its name, or its first bytes for stdin and
URLs); ``probe`` asks the decoder process for its page count (and, for ``--text-layer``, which
pages carry their own text) before the model loads; ``load_page`` renders one page into an engine
image, ``load_text`` reads one page's own text. Nothing of a document stays in kvl's memory
between pages: the decoder process renders each page when its turn comes.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.types import ImageInput
from ..errors import InputError
from ..limits import max_input_bytes
from ..pages import Page, max_pages
from . import sandbox
from .decode import pixel_limit
from .pdf import DocInfo, document_info, is_pdf_bytes, page_text, render_page

PDF_EXTENSIONS = {".pdf"}
TIFF_EXTENSIONS = {".tif", ".tiff"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")


@dataclass(frozen=True)
class DocumentOptions:
    """How documents are read: which pages, at what resolution, with what password, and whether a
    page's own text stands in for OCR (``--text-layer``)."""

    pages: str | None = None
    dpi: float | None = None
    password: str | None = field(default=None, repr=False)  # never shown, logged or recorded
    text_layer: bool = False


@dataclass(frozen=True)
class DocPage:
    """Which page of which kind of document an input is (carried by ``InputRef.page``)."""

    page: Page
    kind: str  # "pdf" or "tiff"
    dpi: float | None = None
    password: str | None = field(default=None, repr=False)
    text: bool = False  # read its own text instead of rendering it

    @property
    def number(self) -> int:
        return self.page.number


def document_kind(suffix: str, head: bytes | None) -> str | None:
    """"pdf", "tiff" (maybe a multi-page one) or None (an image, or a video) from the input's name
    (``suffix``) or, for an input without a telling name, its first bytes."""
    if suffix in PDF_EXTENSIONS:
        return "pdf"
    if suffix in TIFF_EXTENSIONS:
        return "tiff"
    if head is not None:
        if is_pdf_bytes(head):
            return "pdf"
        if head.startswith(_TIFF_MAGIC):
            return "tiff"
    return None


_spooled: list[Path] = []


def spool(data: bytes, suffix: str) -> Path:
    """A document read once (stdin, a URL, a request's file part) kept in a private temporary file
    (mode 0600) that the decoder process opens page after page: its bytes cross the pipe and are
    hashed once, not once per page (a 256 MB PDF of 300 pages would be 77 GB). Removed by
    ``discard`` or when kvl exits."""
    fd, name = tempfile.mkstemp(prefix="kvl-doc-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if not _spooled:
        atexit.register(_discard_all)
    _spooled.append(Path(name))
    return Path(name)


def _discard_all() -> None:
    for path in list(_spooled):
        discard(path)


def discard(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        _spooled.remove(path)
        path.unlink()


def probe(label: str, source: Path | bytes, kind: str, options: DocumentOptions) -> tuple[DocInfo, list[int]]:
    """The document's page count (and the pages with their own text, for ``--text-layer``), from
    the decoder process; InputError if it cannot be read (damaged, encrypted, too many pages)."""
    limit = max_pages()
    if not sandbox.enabled():
        return document_info(label, source, kind=kind, password=options.password, limit=limit, pixels=pixel_limit(),
                             text_layer=options.text_layer and kind == "pdf")
    done, _ = _request("doc.info", label, source, {"kind": kind, "password": options.password, "limit": limit,
                                                  "text_layer": options.text_layer and kind == "pdf"})
    pages, with_text = done.get("pages"), done.get("text_pages", [])
    if not (isinstance(pages, int) and 0 < pages <= limit and isinstance(with_text, list)
            and all(isinstance(n, int) and 0 < n <= pages for n in with_text)):
        raise InputError(f"{label}: the document decoder gave a malformed answer", hint="report it")
    return DocInfo(kind, pages), with_text


def load_page(label: str, source: Path | bytes, page: DocPage, max_tokens: int | None) -> ImageInput:
    """Page ``page`` rendered (or a TIFF's frame decoded) into an engine image, upright, filling
    ``max_tokens`` image tokens (or at ``--dpi``)."""
    name = f"{label} page {page.number}"
    width, height, rgb = _rendered(label, source, page, max_tokens)
    digest = hashlib.sha256(rgb).hexdigest()[:32] + f"-{width}x{height}"  # the cache's key: this rendered page
    return ImageInput(rgb=rgb, width=width, height=height, id=digest, label=name)


def _rendered(label: str, source: Path | bytes, page: DocPage, max_tokens: int | None) -> tuple[int, int, bytes]:
    if not sandbox.enabled():
        with render_page(label, source, page.number, kind=page.kind, password=page.password, max_tokens=max_tokens,
                         dpi=page.dpi, pixels=pixel_limit()) as (width, height, view):
            return width, height, bytes(view)
    done, rgb = _request("doc.page", label, source, {"kind": page.kind, "password": page.password,
                                                     "page": page.number, "max_tokens": max_tokens, "dpi": page.dpi})
    w, h = done.get("width"), done.get("height")
    if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 and len(rgb) == w * h * 3):
        raise InputError(f"{label}: the document decoder gave a malformed answer", hint="report it")
    return w, h, rgb


def load_text(label: str, source: Path | bytes, page: DocPage) -> str:
    """Page ``page``'s own text (``--text-layer``)."""
    if not sandbox.enabled():
        return page_text(label, source, page.number, password=page.password)
    done, data = _request("doc.text", label, source, {"page": page.number, "password": page.password})
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{label}: the document decoder gave a malformed answer", hint="report it") from None


def _request(op: str, label: str, source: Path | bytes, fields: dict[str, object]) -> tuple[sandbox.Header, bytes]:
    pixels, byte_limit = pixel_limit(), max_input_bytes()
    header = {"label": label, "pixels": pixels, "bytes": byte_limit, **fields,
              **(sandbox.where(source) if isinstance(source, Path) else {})}
    replies = sandbox.decoder().request(label, op, header, source if isinstance(source, bytes) else b"",
                                        cap=sandbox.memory_cap(pixels, byte_limit), timeout=sandbox.IMAGE_TIMEOUT_S,
                                        max_payload=max(3 * pixels, byte_limit))
    return replies[-1]
