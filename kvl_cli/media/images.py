"""Inputs from the command line, checked before the model loads, and images decoded for the engine.

``expand_inputs`` turns arguments (files, directories, globs, ``-`` for stdin, http(s) URLs) into
``InputRef``s, reporting each problem separately (with its place among the inputs) so that a batch
can go on without the bad ones. Every input is read once: a regular file is read from disk when it
is needed (a batch never holds its files in memory), anything else (stdin, a FIFO, a process
substitution's ``/dev/fd/N``, a device, a URL) is read once, within ``KVL_MAX_INPUT_BYTES``, and
kept until its job has run. ``precheck_image`` reads only the header (milliseconds);
``load_image`` decodes (see ``decode``), both in kvl's decoder process (see ``sandbox``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..engine.types import ImageInput
from ..errors import InputError, KvlError, UsageError
from ..limits import DeadlineError, is_regular, max_input_bytes, oversized, read_file, read_limited
from . import sandbox
from .decode import DEFAULT_MAX_IMAGE_PIXELS, PIXELS_PER_TOKEN, check_header, decode_rgb_sized, fit, pixel_limit
from .documents import PDF_EXTENSIONS, DocPage, load_page

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}
URL_TIMEOUT_S = 30
URL_DEADLINE_S = 300.0
__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "PIXELS_PER_TOKEN", "InputProblem", "InputRef", "expand_inputs",
           "image_from_array", "load_image", "precheck_image"]


@dataclass
class InputRef:
    label: str  # as the user wrote it (or the file found in a directory)
    path: Path | None = None
    data: bytes | None = None  # what was read once: stdin, a pipe, a downloaded URL
    url: str | None = None
    reader: Callable[[], bytes] | None = None  # stdin: read when first needed, shared by every "-"
    page: DocPage | None = None  # one page of a document (see ``run.documents``)

    @property
    def suffix(self) -> str:
        src = self.path.name if self.path else (self.url or "")
        return Path(src.split("?")[0]).suffix.lower()

    def source(self) -> Path | bytes:
        """A regular file's path (read when decoded), or the bytes of anything that can be read only
        once, read now (within the size limit) and kept until ``release``."""
        if self.data is not None:
            return self.data
        if self.path is not None and is_regular(self.path):
            return self.path
        if self.url is not None:
            self.data = fetch_url(self.url)
        elif self.reader is not None:
            self.data = self.reader()
        else:
            assert self.path is not None
            self.data = read_file(self.path, self.label)
        return self.data

    def read_bytes(self) -> bytes:
        src = self.source()
        return read_file(src, self.label) if isinstance(src, Path) else src

    def release(self) -> None:
        """Its job has run: what was kept can go (a long batch of URLs must not pile up)."""
        if self.url is not None or self.reader is not None or self.path is not None:
            self.data = None


@dataclass
class InputProblem:
    label: str
    error: KvlError  # an InputError; a UsageError for a page a document does not have (--pages)
    at: int | None = None  # how many inputs come before it (its place in the order); None: first


def url_deadline() -> float:
    """Seconds a whole download may take (``KVL_URL_DEADLINE_S``, default 300): a server that sends a
    byte now and then must not hold a run forever (each read also times out after 30 s)."""
    raw = os.environ.get("KVL_URL_DEADLINE_S", "").strip()
    try:
        value = float(raw) if raw else URL_DEADLINE_S
    except ValueError:
        raise UsageError(f"KVL_URL_DEADLINE_S={raw!r} is not a number of seconds",
                         hint="e.g. KVL_URL_DEADLINE_S=600") from None
    if not value > 0:
        raise UsageError(f"KVL_URL_DEADLINE_S={raw!r} must be above 0", hint="e.g. KVL_URL_DEADLINE_S=600")
    return value


def fetch_url(url: str) -> bytes:
    """The URL's body, within ``KVL_MAX_INPUT_BYTES`` (a larger Content-Length is refused unread) and
    within ``KVL_URL_DEADLINE_S`` for the whole exchange."""
    limit = max_input_bytes()
    seconds = url_deadline()
    deadline = time.monotonic() + seconds
    try:
        with urllib.request.urlopen(url, timeout=min(URL_TIMEOUT_S, seconds)) as resp:  # noqa: S310 - user-given URL
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                raise oversized(url, limit)
            return read_limited(resp, url, limit, deadline=deadline)
    except DeadlineError:
        raise InputError(f"{url}: the download took more than {seconds:g} s; stopped",
                         hint="download it first, or raise KVL_URL_DEADLINE_S") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"{url}: download failed ({reason})", hint="check the URL, or download it first") from None


def _is_media(path: Path, video: bool) -> bool:
    exts = IMAGE_EXTENSIONS | (VIDEO_EXTENSIONS if video else PDF_EXTENSIONS)  # documents: the image commands'
    return path.suffix.lower() in exts and not path.name.startswith(".")


def expand_inputs(args: list[str], *, video: bool = False, stdin: bytes | Callable[[], bytes] | None = None
                  ) -> tuple[list[InputRef], list[InputProblem]]:
    """Resolve arguments in order; directories and globs expand to sorted media files. ``stdin``:
    its bytes, or a function that reads them (called when ``-`` is first needed). Each problem
    knows its place among the inputs (``at``), so that it can be reported in order."""
    refs: list[InputRef] = []
    problems: list[InputProblem] = []
    if args and sandbox.enabled():
        sandbox.decoder().prestart(sandbox.memory_cap(pixel_limit(), max_input_bytes()))
    for arg in args:
        if arg == "-":
            refs.append(InputRef("-", reader=stdin) if callable(stdin) else InputRef("-", data=stdin or b""))
        elif arg.startswith(("http://", "https://")):
            refs.append(InputRef(label=arg, url=arg))
        else:
            try:
                found = _expand_path(arg, video)
            except InputError as exc:
                problems.append(InputProblem(arg, exc, len(refs)))
                continue
            except (OSError, ValueError, RuntimeError) as exc:  # a name too long, a NUL byte, ~nosuchuser
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                problems.append(InputProblem(arg, InputError(f"{arg!r}: not a usable file name ({reason})",
                                                             hint="check the name"), len(refs)))
                continue
            refs += found
    return refs, problems


def _expand_path(arg: str, video: bool) -> list[InputRef]:
    """A file, a directory's media files (recursively, sorted) or a glob's; InputError if none."""
    what = "images or videos" if video else "images"
    if "\x00" in arg:
        raise ValueError("it holds a NUL byte")
    path = Path(arg).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and _is_media(p, video))
        if not found:
            raise InputError(f"{arg}: no {what} in this directory", hint=f"extensions kvl reads: {_ext_list(video)}")
        return [InputRef(label=str(p), path=p) for p in found]
    if path.exists():
        return [InputRef(label=arg, path=path)]
    if any(c in arg for c in "*?["):
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(arg), recursive=True))
        matches = [m for m in matches if m.is_file() and _is_media(m, video)]
        if not matches:
            raise InputError(f"{arg}: no {what} match this pattern", hint="check the pattern and the folder")
        return [InputRef(label=str(m), path=m) for m in matches]
    raise InputError(f"{arg}: file not found", hint="check the path")


def _ext_list(video: bool) -> str:
    exts = sorted(IMAGE_EXTENSIONS | (VIDEO_EXTENSIONS if video else PDF_EXTENSIONS))
    return " ".join(exts)


def precheck_image(ref: InputRef) -> None:
    """Header-only check: exists, non-empty, within the size limits, a known format. A URL is
    fetched when its turn comes; a pipe or stdin is read here, once, and kept for the load."""
    if ref.url is not None or ref.page is not None:  # a document's page: read when the document was
        return
    _decode("image.header", ref.label, ref.source())


def load_image(ref: InputRef, *, max_tokens: int | None = None) -> ImageInput:
    """Decode to RGB, orientation fixed, alpha flattened; downsized to ``max_tokens`` worth of pixels
    (a document's page: rendered to fill them)."""
    if ref.page is not None:
        return load_page(ref.label, ref.source(), ref.page, max_tokens)
    width, height, rgb, seen = _decode("image.decode", ref.label, ref.source(), max_tokens)
    digest = hashlib.sha256(rgb).hexdigest()[:32] + f"-{width}x{height}"
    return ImageInput(rgb=rgb, width=width, height=height, id=digest, label=ref.label, source_size=seen)


def _decode(op: str, label: str, source: Path | bytes,
            max_tokens: int | None = None) -> tuple[int, int, bytes, tuple[int, int]]:
    """(width, height, RGB bytes, the size as a person sees it) from the decoder process, or in this
    one with ``KVL_SANDBOX=0``."""
    pixels, byte_limit = pixel_limit(), max_input_bytes()
    if not sandbox.enabled():
        if op == "image.header":
            w, h = check_header(label, source, pixels=pixels, byte_limit=byte_limit)
            return w, h, b"", (w, h)
        img, seen = decode_rgb_sized(label, source, max_tokens=max_tokens, pixels=pixels, byte_limit=byte_limit)
        return img.width, img.height, img.tobytes(), seen
    header = {"label": label, "pixels": pixels, "bytes": byte_limit, "max_tokens": max_tokens,
              **(sandbox.where(source) if isinstance(source, Path) else {})}
    replies = sandbox.decoder().request(label, op, header, source if isinstance(source, bytes) else b"",
                                        cap=sandbox.memory_cap(pixels, byte_limit), timeout=sandbox.IMAGE_TIMEOUT_S,
                                        max_payload=3 * pixels)
    done, rgb = replies[-1]
    width, height = done.get("width"), done.get("height")
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0
            and (op == "image.header" or len(rgb) == width * height * 3)):
        raise InputError(f"{label}: the image decoder gave a malformed answer", hint="report it")
    sw, sh = done.get("source_width", width), done.get("source_height", height)
    seen = (sw, sh) if isinstance(sw, int) and isinstance(sh, int) and sw > 0 and sh > 0 else (width, height)
    return width, height, rgb, seen


def _to_input(img, label: str) -> ImageInput:  # type: ignore[no-untyped-def]
    rgb = img.tobytes()
    digest = hashlib.sha256(rgb).hexdigest()[:32] + f"-{img.width}x{img.height}"
    return ImageInput(rgb=rgb, width=img.width, height=img.height, id=digest, label=label)


def image_from_array(array, *, label: str, max_tokens: int | None = None) -> ImageInput:  # type: ignore[no-untyped-def]
    """An RGB ``numpy`` array (a video frame, already decoded) as an engine image, downsized to the
    token budget."""
    from PIL import Image

    img = Image.fromarray(array, "RGB")
    return _to_input(fit(img, max_tokens), label)
