"""A request's images, read within the CLI's limits, and the engine request they go into.

``image_url`` may be a data URI (base64; its decoded size is known from its length, so one over
``KVL_MAX_INPUT_BYTES`` is refused before a byte is decoded), an http(s) URL (fetched by ``fetch``:
one deadline, the URL policy, bounded), or a ``file://`` path inside a folder the server was started
with (``--allow-files``, read by ``files``: no symbolic link followed, regular files only).
Decoding is the CLI's: kvl's sandboxed decoder, downsized to the request's image token budget.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading

from ..engine.types import ImageInput, Request
from ..errors import InputError, UsageError
from ..limits import human, max_input_bytes
from ..media.documents import DocPage, DocumentOptions, discard, load_page, probe, spool
from ..media.images import InputRef, load_image
from ..pages import Page, select_pages
from .errors import ApiError, bad_request, from_kvl, too_large
from .fetch import Fetcher, failed
from .files import AllowedFolders
from .protocol import ChatCall, FilePart, ImagePart, Part

DECODES = 2  # images decoded at once (kvl's decoder process takes one at a time)


class Media:
    """Where a request's images come from: data URIs, URLs (``fetcher``), allowed files (``files``)."""

    def __init__(self, files: AllowedFolders, fetcher: Fetcher) -> None:
        self.files = files
        self.fetcher = fetcher
        self._decoding: asyncio.Semaphore | None = None

    async def decode(self, data: bytes, where: str, max_tokens: int) -> ImageInput:
        """Decoded on a worker thread, at most ``DECODES`` at once (the rest wait here, where a client
        that leaves stops waiting, not on a thread the server's other work needs)."""
        self._decoding = self._decoding or asyncio.Semaphore(DECODES)
        async with self._decoding:
            return await asyncio.to_thread(decode, data, where, max_tokens)

    async def build_request(self, call: ChatCall, marker: str) -> Request:
        """The engine request for ``call``, every image read and decoded, every PDF's pages rendered
        (each after its ``[page N]`` label). Raises ApiError."""
        images: list[ImageInput] = []
        labels: dict[int, list[str]] = {}  # a file part -> its pages' labels
        files = [p for p in call.media if isinstance(p, FilePart)]
        for part in call.media:
            if isinstance(part, FilePart):
                pages = await self.load_document(part, call, several=len(files) > 1)
                labels[id(part)] = [label for label, _ in pages]
                images += [image for _, image in pages]
            else:
                images.append(await self.load(part, call.image_max_tokens))
        texts = [_text(turn.parts, marker, labels) for turn in call.turns]
        return Request(user_text=texts[-1], images=images, system=call.system, settings=call.settings,
                       messages=[(turn.role, text) for turn, text in zip(call.turns[:-1], texts, strict=False)],
                       cancel=threading.Event(), keep_answer=True)  # a follow-up (a chat) reuses the answer's cells

    async def load_document(self, part: FilePart, call: ChatCall, *, several: bool) -> list[tuple[str, ImageInput]]:
        """A PDF file part's selected pages (``kvl.pages``), each rendered to the request's image budget,
        with its label; the body cap bounds the file, the pixel cap each page."""
        head = part.data[:64].lower()
        if not head.startswith("data:application/pdf"):
            raise bad_request(f"{part.where}: file_data must be a PDF (data:application/pdf;base64,...)",
                              param=f"{part.where}.file", code="invalid_file")
        data = await asyncio.to_thread(decode_data_uri, part.data, part.where)
        name = part.filename or part.where
        self._decoding = self._decoding or asyncio.Semaphore(DECODES)
        async with self._decoding:
            return await asyncio.to_thread(_pages, data, name, call.pages, call.image_max_tokens, several)

    async def load(self, part: ImagePart, max_tokens: int) -> ImageInput:
        url, where = part.url, part.where
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        cap = max_input_bytes()
        if scheme == "data":
            data = await asyncio.to_thread(decode_data_uri, url, where)
            return await self.decode(data, where, max_tokens)
        if scheme == "file":
            data = await asyncio.to_thread(self.files.read, url, where, cap)
            return await self.decode(data, where, max_tokens)
        if scheme in ("http", "https"):
            data = await self.fetcher.fetch(url, where, cap)
            try:
                return await self.decode(data, where, max_tokens)
            except ApiError as exc:
                if exc.status == 413:
                    raise
                raise failed(url, where, self.fetcher.limits.deadline_s) from None  # not told apart
        raise bad_request(f"{where}: image_url must be a data: URI, an http(s) URL or a file:// URL",
                          param=where, code="invalid_image")


def decode(data: bytes, label: str, max_tokens: int) -> ImageInput:
    try:
        return load_image(InputRef(label=label, data=data), max_tokens=max_tokens)
    except InputError as exc:
        raise from_kvl(exc) from None


def _pages(data: bytes, name: str, spec: str | None, max_tokens: int, several: bool) -> list[tuple[str, ImageInput]]:
    """A PDF's selected pages, rendered in kvl's decoder process, each with its label."""
    path = spool(data, ".pdf")  # read page after page by the decoder: sent once, not once per page
    try:
        info, _ = probe(name, path, "pdf", DocumentOptions(pages=spec))
        numbers = select_pages(spec, info.pages, name)
        out = []
        for n in numbers:
            page = DocPage(Page(n, info.pages), "pdf")
            out.append((f"[{name} page {n}]" if several else f"[page {n}]", load_page(name, path, page, max_tokens)))
        return out
    except UsageError as exc:
        raise bad_request(str(exc), param="kvl.pages") from None
    except InputError as exc:
        raise from_kvl(exc) from None
    finally:
        discard(path)


def _text(parts: list[Part], marker: str, labels: dict[int, list[str]] | None = None) -> str:
    """A message's parts in order: each image as the marker, text parts next to each other on separate
    lines, an image and the text after it with nothing between (Kimi-VL's trained layout); a
    document's pages each as their label and the marker."""
    out = ""
    prev_text = False
    for part in parts:
        is_text = isinstance(part, str)
        if is_text and prev_text:
            out += "\n"
        if isinstance(part, str):
            out += part
        elif isinstance(part, FilePart):
            out += "".join(label + marker for label in (labels or {}).get(id(part), []))
        else:
            out += marker
        prev_text = is_text
    return out


def decode_data_uri(url: str, where: str) -> bytes:
    """``data:[type][;base64],payload``: only base64 (what every client sends for images)."""
    head, sep, payload = url.partition(",")
    if not sep or not head.lower().endswith(";base64"):
        raise bad_request(f"{where}: a data URI must be base64 (data:image/png;base64,...)", param=where,
                          code="invalid_image")
    limit = max_input_bytes()
    size = len(payload) * 3 // 4 - payload[-2:].count("=")
    if size > limit:
        raise too_large(f"{where}: the image is {human(size)}, over the server's limit of {human(limit)} "
                        "(KVL_MAX_INPUT_BYTES where the server runs)", code="image_too_large")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where}: the data URI is not valid base64", param=where, code="invalid_image") from None
