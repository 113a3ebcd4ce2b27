"""PDFs the suite writes itself, byte by byte: pages of any size with text (a real text layer, in
Helvetica) and black boxes, a page ``/Rotate``, RC4 encryption (the standard security handler,
revision 2: what any reader opens with the password), and damaged ones.

Nothing here uses the code under test: a PDF is a few objects and a cross-reference table.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

LETTER = (612.0, 792.0)
A4 = (595.0, 842.0)
_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


@dataclass
class PageSpec:
    width: float = LETTER[0]
    height: float = LETTER[1]
    text: str | None = None  # drawn at the top left, so the page has a text layer
    rotate: int = 0  # the page's /Rotate
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # filled black (x, y, w, h)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _content(page: PageSpec) -> bytes:
    ops = [f"0 g {x:g} {y:g} {w:g} {h:g} re f" for x, y, w, h in page.boxes]
    if page.text:
        ops.append(f"BT /F1 24 Tf 36 {page.height - 60:g} Td ({_escape(page.text)}) Tj ET")
    return "\n".join(ops).encode("latin-1")


def _rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def _padded(password: str) -> bytes:
    return (password.encode("latin-1") + _PAD)[:32]


class _Security:
    """The standard security handler, revision 2 (40-bit RC4)."""

    def __init__(self, user: str, owner: str, doc_id: bytes) -> None:
        self.perms = struct.pack("<i", -44)
        self.owner_entry = _rc4(hashlib.md5(_padded(owner)).digest()[:5], _padded(user))
        self.key = hashlib.md5(_padded(user) + self.owner_entry + self.perms + doc_id).digest()[:5]
        self.user_entry = _rc4(self.key, _PAD)

    def encrypt(self, num: int, data: bytes) -> bytes:
        key = hashlib.md5(self.key + struct.pack("<i", num)[:3] + b"\x00\x00").digest()[:10]
        return _rc4(key, data)

    def dictionary(self) -> bytes:
        return (b"<< /Filter /Standard /V 1 /R 2 /O <" + self.owner_entry.hex().encode() + b"> /U <"
                + self.user_entry.hex().encode() + b"> /P -44 >>")


def pdf_bytes(pages: list[PageSpec], *, password: str | None = None, share_content: bool = False) -> bytes:
    """A PDF of ``pages``; ``password``: encrypted, opened only with it; ``share_content``: every page
    draws the first page's content (a 300-page file stays small)."""
    doc_id = hashlib.md5(repr(pages).encode()).digest()
    security = _Security(password, password + "-owner", doc_id) if password is not None else None
    objects: dict[int, bytes] = {}
    n = len(pages)
    first_page = 4
    contents = [first_page + n + (0 if share_content else i) for i in range(n)]
    kids = " ".join(f"{first_page + i} 0 R" for i in range(n))
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[2] = f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode()
    objects[3] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    for i, page in enumerate(pages):
        rotate = f" /Rotate {page.rotate}" if page.rotate else ""
        objects[first_page + i] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {page.width:g} {page.height:g}]"
                                   f" /Resources << /Font << /F1 3 0 R >> >> /Contents {contents[i]} 0 R{rotate} >>"
                                   ).encode()
    for i, page in enumerate(pages[:1] if share_content else pages):
        num = first_page + n + i
        data = _content(page)
        if security is not None:
            data = security.encrypt(num, data)
        objects[num] = b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"
    if security is not None:
        objects[max(objects) + 1] = security.dictionary()
    return _assemble(objects, doc_id, max(objects) if security is not None else None)


def _assemble(objects: dict[int, bytes], doc_id: bytes, encrypt: int | None) -> bytes:
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for num in sorted(objects):
        offsets[num] = len(out)
        out += b"%d 0 obj\n" % num + objects[num] + b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for num in range(1, size):
        out += b"%010d 00000 n \n" % offsets[num]
    enc = b" /Encrypt %d 0 R" % encrypt if encrypt is not None else b""
    ident = doc_id.hex().encode()
    out += b"trailer\n<< /Size %d /Root 1 0 R /ID [<%s> <%s>]%s >>\nstartxref\n%d\n%%%%EOF\n" % (
        size, ident, ident, enc, xref)
    return bytes(out)


def write_pdf(path: Path, pages: list[PageSpec], **kwargs: object) -> Path:
    path.write_bytes(pdf_bytes(pages, **kwargs))  # type: ignore[arg-type]
    return path


def mixed_pages() -> list[PageSpec]:
    """Three pages of mixed sizes, the second rotated: a Letter page, a landscape A5 with /Rotate 90
    and a mark at its (unrotated) top left, and a small square page; each with its own text."""
    return [PageSpec(*LETTER, text="Invoice 1001 total 42.00"),
            PageSpec(595, 420, text="Rotated page two", rotate=90, boxes=[(0, 320, 100, 100)]),
            PageSpec(300, 300, text="Page three")]


def scanned_pages(n: int) -> list[PageSpec]:
    """``n`` pages with no text layer (boxes only: a scan, for OCR)."""
    return [PageSpec(*LETTER, boxes=[(72, 72 + 10 * (i % 40), 200, 20)]) for i in range(n)]


def damaged_pdf() -> bytes:
    """A PDF cut in the middle of its first object: no cross-reference table, no page tree."""
    return pdf_bytes(mixed_pages())[:60]
