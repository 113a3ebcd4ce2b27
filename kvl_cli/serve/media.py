"""A request's images, read within the CLI's limits, and the engine request they go into.

``image_url`` may be a data URI (base64; its decoded size is known from its length, so one over
``KVL_MAX_INPUT_BYTES`` is refused before a byte is decoded), an http(s) URL (fetched with the CLI's
cap and timeout), or a ``file://`` path inside a folder the server was started with
(``--allow-files``; the path is resolved first, so neither ``..`` nor a symlink leads out). Decoding
is the CLI's: kvl's sandboxed decoder, downsized to the request's image token budget.
"""

from __future__ import annotations

import base64
import binascii
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from ..engine.types import ImageInput, Request
from ..errors import InputError
from ..limits import human, max_input_bytes
from ..media.images import InputRef, load_image
from .errors import ApiError, bad_request, from_kvl, too_large
from .protocol import ChatCall, ImagePart, Part


def build_request(call: ChatCall, marker: str, allow_files: list[Path]) -> Request:
    """The engine request for ``call``: every image read and decoded (blocking: run it off the event
    loop). Raises ApiError."""
    images = [load_part(part, call.image_max_tokens, allow_files) for part in call.images]
    texts = [_text(turn.parts, marker) for turn in call.turns]
    return Request(user_text=texts[-1], images=images, system=call.system, settings=call.settings,
                   messages=[(turn.role, text) for turn, text in zip(call.turns[:-1], texts, strict=False)],
                   cancel=threading.Event())


def _text(parts: list[Part], marker: str) -> str:
    """A message's parts in order: each image as the marker, text parts next to each other on separate
    lines, an image and the text after it with nothing between (Kimi-VL's trained layout)."""
    out = ""
    prev_text = False
    for part in parts:
        is_text = isinstance(part, str)
        if is_text and prev_text:
            out += "\n"
        out += part if isinstance(part, str) else marker
        prev_text = is_text
    return out


def load_part(part: ImagePart, max_tokens: int, allow_files: list[Path]) -> ImageInput:
    ref = _ref(part, allow_files)
    try:
        return load_image(ref, max_tokens=max_tokens)
    except InputError as exc:
        raise from_kvl(exc) from None
    finally:
        ref.release()


def _ref(part: ImagePart, allow_files: list[Path]) -> InputRef:
    url = part.url
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return InputRef(label=part.where, data=decode_data_uri(url, part.where))
    if scheme in ("http", "https"):
        return InputRef(label=url, url=url)
    if scheme == "file":
        return InputRef(label=url, path=allowed_file(url, allow_files, part.where))
    raise bad_request(f"{part.where}: image_url must be a data: URI, an http(s) URL or a file:// URL",
                      param=part.where, code="invalid_image")


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


def allowed_file(url: str, allow_files: list[Path], where: str) -> Path:
    """The path of a ``file://`` URL, if it lies inside one of ``allow_files`` once resolved."""
    parsed = urllib.parse.urlparse(url)
    if not allow_files:
        raise ApiError(403, f"{where}: file:// images are off (start kvl serve with --allow-files DIR)",
                       type="permission_error", code="file_not_allowed", param=where)
    if parsed.netloc not in ("", "localhost"):
        raise bad_request(f"{where}: a file:// URL names a local path (file:///path)", param=where,
                          code="invalid_image")
    path = Path(urllib.request.url2pathname(parsed.path)).resolve()
    if not any(path.is_relative_to(folder) for folder in allow_files):
        raise ApiError(403, f"{where}: {path} is outside the folders this server reads (--allow-files)",
                       type="permission_error", code="file_not_allowed", param=where)
    return path
