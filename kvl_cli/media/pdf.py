"""Document pages to pixels (or to their own text), in whatever process runs it: kvl's decoder
process (``sandbox``) by default, like every image.

A PDF is read with pypdfium2 (PDFium; Apache-2.0/BSD) one page at a time: a page is rendered,
handed over and let go before the next, so a 300-page file never holds more than one page's pixels.
A multi-page TIFF is read as pages too (Pillow's ``seek``).

The render scale follows the task's image token budget: a page gets the pixels that fill its
budget (tokens × 28² pixels), as a photo is downsized to it; the encoder would resize a larger
render there anyway, and a smaller one would waste the budget. For a US Letter page that is about
131 dpi for ``ocr`` (2048 tokens) and 93 dpi for ``caption``/``ask`` (1024), never more than 300 dpi.
``--dpi`` sets it instead. A page's ``/Rotate`` is honoured: it comes out upright.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..limits import read_file
from .decode import PIXELS_PER_TOKEN, fit, open_image
from .decode import _flatten as flatten

MAX_DPI = 300.0  # a budget-filling render never goes past print resolution
MAX_PAGE_INCHES = 100.0  # a page longer than this on a side is refused (no sane document has one)
PDF_MAGIC = b"%PDF-"
DEFAULT_DPI_TOKENS = 1024  # with no budget given: a caption's

# PDFium's document load errors (FPDF_ERR_*)
_ERR_FILE, _ERR_FORMAT, _ERR_PASSWORD, _ERR_SECURITY = 2, 3, 4, 5

Source = Path | bytes


@dataclass(frozen=True)
class DocInfo:
    kind: str  # "pdf" or "tiff"
    pages: int


def is_pdf_bytes(head: bytes) -> bool:
    """A PDF begins with ``%PDF-`` within its first kilobyte (readers allow leading junk)."""
    return PDF_MAGIC in head[:1024]


def render_dpi(width_pt: float, height_pt: float, max_tokens: int | None, dpi: float | None) -> float:
    """The resolution a page of this size (in points, 1/72 inch) is rendered at: ``dpi`` if given,
    else the one whose pixels fill ``max_tokens`` image tokens (at most 300 dpi)."""
    if dpi:
        return float(dpi)
    pixels = (max_tokens or DEFAULT_DPI_TOKENS) * PIXELS_PER_TOKEN
    area_in2 = max(width_pt * height_pt, 1.0) / (72.0 * 72.0)
    return min(MAX_DPI, (pixels / area_in2) ** 0.5)


# ---- PDF ------------------------------------------------------------------------------------------


class _OpenDocs:
    """The last PDF opened, kept open: a document's pages are asked for one request at a time, and
    parsing its cross-reference table again for each of 300 pages would be waste."""

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.doc: Any = None

    def get(self, label: str, source: Source, password: str | None) -> Any:
        key = _doc_key(source, password)
        if key != self.key or self.doc is None:
            self.close()
            self.doc = _open_pdf(label, source, password)
            self.key = key
        return self.doc

    def close(self) -> None:
        if self.doc is not None:
            self.doc.close()
        self.doc, self.key = None, None


def _doc_key(source: Source, password: str | None) -> tuple[Any, ...]:
    pw = hashlib.sha256(password.encode("utf-8", "surrogateescape")).hexdigest() if password else ""
    if isinstance(source, Path):
        try:
            st = source.stat()
            return ("path", str(source.resolve()), st.st_mtime_ns, st.st_size, pw)
        except OSError:
            return ("path", str(source), 0, 0, pw)
    return ("bytes", hashlib.sha256(source).hexdigest(), pw)


_docs = _OpenDocs()


def _open_pdf(label: str, source: Source, password: str | None) -> Any:
    import pypdfium2 as pdfium

    data = read_file(source, label) if isinstance(source, Path) else source
    if not data:
        raise InputError(f"{label}: the file is empty (0 bytes)", hint="check that it was written completely")
    if not is_pdf_bytes(data[:1024]):
        raise InputError(f"{label}: not a PDF (it is named like one, but does not begin with %PDF-)",
                         hint="check the file; rename it if it is an image")
    try:
        return pdfium.PdfDocument(data, password=password or None)
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code == _ERR_PASSWORD:
            if password:
                raise InputError(f"{label}: the PDF's password is wrong",
                                 hint="check --password or KVL_PDF_PASSWORD") from None
            raise InputError(f"{label}: the PDF is encrypted",
                             hint="give its password with --password or KVL_PDF_PASSWORD") from None
        if code == _ERR_SECURITY:
            raise InputError(f"{label}: the PDF uses an encryption kvl cannot open",
                             hint="decrypt it with another tool first") from None
        raise InputError(f"{label}: the PDF is damaged (PDFium could not read it)",
                         hint="re-export or re-download it; `qpdf --check` says more") from None


def _pdf_pages(label: str, doc: Any, limit: int) -> int:
    n = len(doc)
    if n > limit:
        raise InputError(f"{label}: the PDF has {n:,} pages, over the {limit:,}-page safety limit",
                         hint="split it (e.g. qpdf --pages), or raise KVL_MAX_PDF_PAGES if you trust the file")
    if n < 1:
        raise InputError(f"{label}: the PDF has no pages", hint="check the file")
    return n


def _check_size(label: str, number: int, width_pt: float, height_pt: float) -> None:
    if not (width_pt > 0 and height_pt > 0):
        raise InputError(f"{label}: page {number} has no size ({width_pt:g}x{height_pt:g} pt)",
                         hint="the PDF is damaged; re-export it")
    longest = max(width_pt, height_pt) / 72.0
    if longest > MAX_PAGE_INCHES:
        raise InputError(f"{label}: page {number} is {width_pt / 72:.0f}x{height_pt / 72:.0f} inches, over the "
                         f"{MAX_PAGE_INCHES:.0f}-inch safety limit", hint="crop or scale the page with another tool")


@contextmanager
def _page(doc: Any, number: int) -> Iterator[Any]:
    page = doc[number - 1]
    try:
        yield page
    finally:
        page.close()


def _pdf_text(page: Any) -> str:
    textpage = page.get_textpage()
    try:
        text: str = textpage.get_text_range()
    finally:
        textpage.close()
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


Pixels = tuple[int, int, "bytes | memoryview"]  # width, height, RGB (row after row, no padding)


def _render_pdf_page(label: str, doc: Any, number: int, *, max_tokens: int | None, dpi: float | None,
                     pixels: int) -> Any:
    """PDFium's bitmap of the page, rendered straight to the size it is sent at (no resize after)."""
    with _page(doc, number) as page:
        width_pt, height_pt = page.get_size()  # as shown: /Rotate already applied
        _check_size(label, number, width_pt, height_pt)
        res = render_dpi(width_pt, height_pt, max_tokens, dpi)
        scale = res / 72.0
        w, h = round(width_pt * scale), round(height_pt * scale)
        if w * h > pixels:
            raise InputError(f"{label}: page {number} at {res:.0f} dpi is {w}x{h} pixels, over the "
                             f"{pixels / 1e6:.1f} MP safety limit", hint="lower --dpi")
        target = (max_tokens or 0) * PIXELS_PER_TOKEN
        if not dpi and target and w * h > target:  # rounding to whole pixels: stay within the budget
            scale *= (target / (w * h)) ** 0.5 * 0.999
        return page.render(scale=scale, rev_byteorder=True, fill_color=(255, 255, 255, 255))


def _rgb(bitmap: Any) -> Pixels:
    """A PDFium bitmap's pixels as packed RGB (rendered with ``rev_byteorder``: already RGB, 3 bytes):
    a view of the bitmap itself when its rows are packed (6 MB a page at 150 dpi, not copied here)."""
    w, h, stride = bitmap.width, bitmap.height, bitmap.stride
    if bitmap.n_channels != 3:
        img = bitmap.to_pil().convert("RGB")
        return img.width, img.height, img.tobytes()
    raw = memoryview(bitmap.buffer).cast("B")
    if stride == w * 3:
        return w, h, raw[:w * h * 3]
    import numpy as np

    rows = np.frombuffer(raw, dtype=np.uint8, count=stride * h).reshape(h, stride)
    return w, h, rows[:, :w * 3].tobytes()


# ---- multi-page TIFF ------------------------------------------------------------------------------


def _tiff(label: str, source: Source, pixels: int) -> Any:
    data = read_file(source, label) if isinstance(source, Path) else source
    return open_image(label, io.BytesIO(data), pixels=pixels)


def _tiff_page(label: str, source: Source, number: int, max_tokens: int | None, pixels: int) -> Any:
    from PIL import ImageOps

    img = _tiff(label, source, pixels)
    img.seek(number - 1)
    w, h = img.size
    if w * h > pixels:
        raise InputError(f"{label}: page {number} is {w}x{h}, over the {pixels / 1e6:.1f} MP safety limit",
                         hint="downscale it first, or raise KVL_MAX_IMAGE_PIXELS if you trust the file")
    img.load()
    return fit(flatten(ImageOps.exif_transpose(img) or img), max_tokens)


# ---- what the decoder process is asked ---------------------------------------------------------------


def _damaged(label: str, kind: str, number: int | None) -> InputError:
    """A document (or one of its pages) its reader could not read, in the documented words: no
    Python exception's name, the path once."""
    reader, what = ("Pillow", "TIFF") if kind == "tiff" else ("PDFium", "PDF")
    where = f"page {number}" if number is not None else f"the {what}"
    return InputError(f"{label}: {where} is damaged ({reader} could not read it)",
                      hint="re-export or re-download it" + ("; `qpdf --check` says more" if what == "PDF" else ""))


def _guarded(fn: Any) -> Any:
    """Any failure but kvl's own on untrusted bytes is the file's: damaged (the page's, for a page)."""

    @functools.wraps(fn)
    def run(label: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(label, *args, **kwargs)
        except InputError:
            raise
        except MemoryError:
            raise InputError(f"{label}: the document needs more memory than kvl allows its decoder",
                             hint="the file is damaged or hostile; convert it with another tool") from None
        except Exception:
            number = args[1] if len(args) > 1 and isinstance(args[1], int) else None
            raise _damaged(label, str(kwargs.get("kind", "pdf")), number) from None

    return run


@_guarded
def document_info(label: str, source: Source, *, kind: str, password: str | None, limit: int,
                  pixels: int, text_layer: bool = False) -> tuple[DocInfo, list[int]]:
    """The document's page count (checked against ``limit``) and, with ``text_layer``, the pages
    that carry text of their own (1-based)."""
    if kind == "tiff":
        frames = int(getattr(_tiff(label, source, pixels), "n_frames", 1))
        if frames > limit:
            raise InputError(f"{label}: the TIFF has {frames:,} pages, over the {limit:,}-page safety limit",
                             hint="split it, or raise KVL_MAX_PDF_PAGES if you trust the file")
        return DocInfo("tiff", frames), []
    doc = _docs.get(label, source, password)
    n = _pdf_pages(label, doc, limit)
    with_text = []
    if text_layer:
        for number in range(1, n + 1):
            with _page(doc, number) as page:
                if _pdf_text(page):
                    with_text.append(number)
    return DocInfo("pdf", n), with_text


@contextmanager
def render_page(label: str, source: Source, number: int, *, kind: str, password: str | None,
                max_tokens: int | None, dpi: float | None, pixels: int) -> Iterator[Pixels]:
    """Page ``number`` (1-based), upright, as (width, height, RGB): at most ``max_tokens`` worth of
    pixels (unless ``dpi`` asks for more). The RGB may be a view of the renderer's bitmap, valid
    inside the ``with`` only."""
    rendered = _render(label, source, number, kind=kind, password=password, max_tokens=max_tokens, dpi=dpi,
                       pixels=pixels)
    if isinstance(rendered, tuple):
        yield rendered
        return
    try:
        yield _rgb(rendered)
    finally:
        rendered.close()


@_guarded
def _render(label: str, source: Source, number: int, *, kind: str, password: str | None,
            max_tokens: int | None, dpi: float | None, pixels: int) -> Any:
    """A TIFF page's pixels, or a PDF page's bitmap; every failure on the way is the file's."""
    if kind == "tiff":
        img = _tiff_page(label, source, number, max_tokens, pixels)
        return img.width, img.height, img.tobytes()
    doc = _docs.get(label, source, password)
    if not 1 <= number <= len(doc):
        raise InputError(f"{label}: page {number} is not in the document ({len(doc)} pages)")
    return _render_pdf_page(label, doc, number, max_tokens=max_tokens, dpi=dpi, pixels=pixels)


@_guarded
def page_text(label: str, source: Source, number: int, *, password: str | None) -> str:
    """Page ``number``'s own text (its text layer), trimmed; empty when it has none."""
    doc = _docs.get(label, source, password)
    with _page(doc, number) as page:
        return _pdf_text(page)


def password_from_env() -> str | None:
    return os.environ.get("KVL_PDF_PASSWORD") or None
