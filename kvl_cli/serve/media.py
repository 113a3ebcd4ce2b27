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
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.types import ImageInput, Request
from ..errors import ContextError, InputError, UsageError
from ..limits import human, max_input_bytes
from ..media.documents import DocPage, DocumentOptions, discard, load_page, probe, spool
from ..media.images import InputRef, load_image
from ..media.pdf import DocInfo, is_pdf_bytes
from ..pages import Page, select_pages
from ..run.documents import (
    MIN_ANSWER_TOKENS,
    PAGE_LABEL_TOKENS,
    TEMPLATE_TOKENS,
    page_budget,
    page_cost,
    pages_that_fit,
)
from ..run.plan import MIN_IMAGE_TOKENS
from .errors import ApiError, bad_request, from_kvl, too_large
from .fetch import Fetcher, failed
from .files import AllowedFolders
from .protocol import ChatCall, FilePart, ImagePart, Part

DECODES = 2  # images decoded at once (kvl's decoder process takes one at a time)


class Media:
    """Where a request's images come from: data URIs, URLs (``fetcher``), allowed files (``files``)."""

    def __init__(self, files: AllowedFolders, fetcher: Fetcher, ctx: int = 0) -> None:
        self.files = files
        self.fetcher = fetcher
        self.ctx = ctx  # the engine's context (0: unknown, pages are not fitted to it)
        self._decoding: asyncio.Semaphore | None = None

    async def decode(self, data: bytes, where: str, max_tokens: int) -> ImageInput:
        """Decoded on a worker thread, at most ``DECODES`` at once (the rest wait here, where a client
        that leaves stops waiting, not on a thread the server's other work needs)."""
        async with self._slot():
            return await asyncio.to_thread(decode, data, where, max_tokens)

    async def build_request(self, call: ChatCall, marker: str) -> Request:
        """The engine request for ``call``, every image read and decoded, every PDF's pages rendered
        (each after its ``[page N]`` label). Every document is opened and counted first: pages that
        cannot fit the context are refused before one is rendered. Raises ApiError."""
        files = [p for p in call.media if isinstance(p, FilePart)]
        opened: dict[int, _Doc] = {}
        try:
            for file in files:
                opened[id(file)] = await self.open_document(file, call)
            self.check_pages(call, list(opened.values()))
            images: list[ImageInput] = []
            labels: dict[int, list[str]] = {}  # a file part -> its pages' labels
            for part in call.media:
                if isinstance(part, FilePart):
                    pages = await self.render_document(opened[id(part)], call.image_max_tokens,
                                                       several=len(files) > 1)
                    labels[id(part)] = [label for label, _ in pages]
                    images += [image for _, image in pages]
                else:
                    images.append(await self.load(part, call.image_max_tokens))
        finally:
            for doc in opened.values():
                discard(doc.path)
        texts = [_text(turn.parts, marker, labels) for turn in call.turns]
        return Request(user_text=texts[-1], images=images, system=call.system, settings=call.settings,
                       messages=[(turn.role, text) for turn, text in zip(call.turns[:-1], texts, strict=False)],
                       cancel=threading.Event(), keep_answer=True)  # a follow-up (a chat) reuses the answer's cells

    async def open_document(self, part: FilePart, call: ChatCall) -> _Doc:
        """A PDF file part spooled to a private file and counted (its selected pages, ``kvl.pages``);
        the body cap bounds the file. Its pages are rendered later, one at a time."""
        data = await asyncio.to_thread(decode_data_uri, part.data, part.where)
        name = part.filename or part.where
        if not is_pdf_bytes(data[:1024]):  # sniffed: a client may send any media type (octet-stream)
            raise bad_request(f"{part.where}: file_data is not a PDF (its bytes do not begin with %PDF-); send "
                              "images as image_url parts", param=f"{part.where}.file", code="invalid_file")
        path = spool(data, ".pdf")  # read page after page by the decoder: sent once, not once per page
        try:
            async with self._slot():
                info = await asyncio.to_thread(_probe, name, path, call.password, part.where)
            return _Doc(name, path, info.pages, _select(call.pages, info.pages, name), part.where, call.password)
        except BaseException:
            discard(path)
            raise

    def check_pages(self, call: ChatCall, docs: list[_Doc]) -> None:
        """Before a page is rendered: a 400 ``context_length_exceeded`` at once when the selected pages,
        each filling the request's image budget (as a page is rendered to), with the request's text
        and other images, cannot fit the server's context; it says what would (fewer pages with
        ``kvl.pages``, or a lower ``kvl.image_max_tokens``). Pages are not shrunk unasked: a page at 30
        tokens is not readable, and the client decides."""
        n_pages = sum(len(d.numbers) for d in docs)
        if not n_pages or self.ctx <= 0:
            return
        budget = call.image_max_tokens
        prompt = _prompt_tokens(call, budget)
        need = n_pages * (budget * 9 // 10 + PAGE_LABEL_TOKENS) + prompt  # a page rendered fills its budget
        if need < self.ctx:
            return
        at_budget = max(0, (self.ctx - prompt - MIN_ANSWER_TOKENS) // page_cost(budget))
        try:
            lower = page_budget(n_pages, budget, self.ctx, MIN_ANSWER_TOKENS, prompt)
            what = (f"choose at most {at_budget} pages with kvl.pages, or " if at_budget else "") + \
                f"lower kvl.image_max_tokens to {lower} (pages then render smaller)"
        except ContextError:
            fits = pages_that_fit(self.ctx, MIN_ANSWER_TOKENS, prompt)
            what = f"even at {MIN_IMAGE_TOKENS} image tokens a page only {fits} would fit: choose pages with kvl.pages"
        raise ApiError(400, f"{n_pages} pages at {budget} image tokens each need about {need:,} tokens, over the "
                       f"server's context ({self.ctx:,} tokens): {what}", code="context_length_exceeded",
                       param="kvl.pages")

    async def render_document(self, doc: _Doc, per_page: int, *,
                              several: bool) -> list[tuple[str, ImageInput]]:
        """The document's selected pages, each rendered on a worker thread at ``per_page`` tokens, with
        its label. Each page takes its own turn at the decoder: other requests' images go between
        pages rather than after the whole document."""
        out = []
        for n in doc.numbers:
            page = DocPage(Page(n, doc.pages), "pdf", password=doc.password)
            async with self._slot():
                image = await asyncio.to_thread(_render, doc, page, per_page)
            out.append((f"[{doc.name} page {n}]" if several else f"[page {n}]", image))
        return out

    def _slot(self) -> asyncio.Semaphore:
        self._decoding = self._decoding or asyncio.Semaphore(DECODES)
        return self._decoding

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


def _prompt_tokens(call: ChatCall, per_image: int) -> int:
    """At most the request's tokens besides its pages: its text (a token is at least a byte), the
    template's, and its other images at their budget."""
    others = sum(1 for p in call.media if isinstance(p, ImagePart)) * (per_image + PAGE_LABEL_TOKENS)
    text = sum(len(p.encode("utf-8", "surrogatepass")) for t in call.turns for p in t.parts if isinstance(p, str))
    return TEMPLATE_TOKENS * len(call.turns) + len((call.system or "").encode("utf-8", "surrogatepass")) + text + others


@dataclass(frozen=True)
class _Doc:
    """A request's PDF, spooled and counted: its name, its file, its page count, the pages to read."""

    name: str
    path: Path
    pages: int
    numbers: list[int]
    where: str
    password: str | None = field(default=None, repr=False)


def _select(spec: str | None, count: int, name: str) -> list[int]:
    try:
        return select_pages(spec, count, name)
    except UsageError:
        raise bad_request(f"kvl.pages {spec}: {name} has {count} page{'s' if count != 1 else ''} (choose pages "
                          f"between 1 and {count})", param="kvl.pages", code="invalid_pages") from None


def _probe(name: str, path: Path, password: str | None, where: str) -> DocInfo:
    try:
        info, _ = probe(name, path, "pdf", DocumentOptions(password=password))
    except InputError as exc:
        raise _document_error(exc, where) from None
    return info


def _render(doc: _Doc, page: DocPage, max_tokens: int) -> ImageInput:
    try:
        return load_page(doc.name, doc.path, page, max_tokens)
    except InputError as exc:
        raise _document_error(exc, doc.where) from None


def _document_error(exc: InputError, where: str) -> ApiError:
    """A document's error in an API's words: ``kvl.password``, not the CLI's flags."""
    if "oversized" in exc.message:
        return from_kvl(exc)
    hint = exc.hint
    if hint and "--password" in hint:
        hint = "give its password as kvl.password" if "encrypted" in exc.message else "check kvl.password"
    elif hint and "--dpi" in hint:
        hint = "lower kvl.image_max_tokens"
    message = f"{exc.message} ({hint})" if hint else exc.message
    return bad_request(message, param=f"{where}.file", code="invalid_file")


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
