"""Inputs from the command line, checked before the model loads, and images decoded for the engine.

``expand_inputs`` turns arguments (files, directories, globs, ``-`` for stdin, http(s) URLs) into
``InputRef``s, reporting each problem separately so that a batch can go on without the bad ones.
``precheck_image`` reads only the header (milliseconds); ``load_image`` decodes, honours EXIF
orientation, flattens alpha onto white, takes a GIF's first frame and downsizes to the pixel
budget the vision encoder will use anyway.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..engine.types import ImageInput
from ..errors import InputError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's decompression-bomb limit
URL_TIMEOUT_S = 30
URL_MAX_BYTES = 100 * 1024 * 1024
PIXELS_PER_TOKEN = 28 * 28  # one image token per 28x28 pixels (14 px patches, 2x2 merge)


@dataclass
class InputRef:
    label: str  # as the user wrote it (or the file found in a directory)
    path: Path | None = None
    data: bytes | None = None  # stdin, or a downloaded URL
    url: str | None = None

    @property
    def suffix(self) -> str:
        src = self.path.name if self.path else (self.url or "")
        return Path(src.split("?")[0]).suffix.lower()

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.url is not None:
            self.data = fetch_url(self.url)
            return self.data
        assert self.path is not None
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise InputError(f"{self.label}: cannot read ({exc.strerror})",
                             hint="check the file's permissions") from None


@dataclass
class InputProblem:
    label: str
    error: InputError


def fetch_url(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as resp:  # noqa: S310 - user-given URL
            data = resp.read(URL_MAX_BYTES + 1)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"{url}: download failed ({reason})", hint="check the URL, or download it first") from None
    if len(data) > URL_MAX_BYTES:
        raise InputError(f"{url}: larger than {URL_MAX_BYTES // 2**20} MB", hint="download it first")
    return data


def _is_media(path: Path, video: bool) -> bool:
    exts = IMAGE_EXTENSIONS | (VIDEO_EXTENSIONS if video else set())
    return path.suffix.lower() in exts and not path.name.startswith(".")


def expand_inputs(args: list[str], *, video: bool = False, stdin: bytes | None = None
                  ) -> tuple[list[InputRef], list[InputProblem]]:
    """Resolve arguments in order; directories and globs expand to sorted media files."""
    refs: list[InputRef] = []
    problems: list[InputProblem] = []
    what = "images or videos" if video else "images"
    for arg in args:
        if arg == "-":
            refs.append(InputRef(label="-", data=stdin or b""))
            continue
        if arg.startswith(("http://", "https://")):
            refs.append(InputRef(label=arg, url=arg))
            continue
        path = Path(arg).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_media(p, video))
            if not found:
                problems.append(InputProblem(arg, InputError(
                    f"{arg}: no {what} in this directory", hint=f"extensions kvl reads: {_ext_list(video)}")))
            refs += [InputRef(label=str(p), path=p) for p in found]
            continue
        if path.exists():
            refs.append(InputRef(label=arg, path=path))
            continue
        if any(c in arg for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(arg), recursive=True))
            matches = [m for m in matches if m.is_file() and _is_media(m, video)]
            if not matches:
                problems.append(InputProblem(arg, InputError(f"{arg}: no {what} match this pattern",
                                                             hint="check the pattern and the folder")))
            refs += [InputRef(label=str(m), path=m) for m in matches]
            continue
        problems.append(InputProblem(arg, InputError(f"{arg}: file not found", hint="check the path")))
    return refs, problems


def _ext_list(video: bool) -> str:
    exts = sorted(IMAGE_EXTENSIONS | (VIDEO_EXTENSIONS if video else set()))
    return " ".join(exts)


def _register_optional_openers() -> bool:
    try:
        import pillow_heif  # type: ignore[import-not-found]
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    if hasattr(pillow_heif, "register_avif_opener"):
        pillow_heif.register_avif_opener()
    return True


_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def _looks_heif(head: bytes) -> bool:
    return len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _open(ref: InputRef, data: bytes):  # type: ignore[no-untyped-def]
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # kvl checks the size itself, with a clearer message
    if not data:
        raise InputError(f"{ref.label}: the file is empty (0 bytes)", hint="check that it was written completely")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if _looks_heif(data[:16]) and not _register_optional_openers():
            raise InputError(f"{ref.label}: HEIC/AVIF images need an optional extra",
                             hint="pip install 'kvl[heif]'") from None
        if _looks_heif(data[:16]):
            try:
                img = Image.open(io.BytesIO(data))
            except UnidentifiedImageError:
                raise InputError(f"{ref.label}: this HEIC/AVIF image could not be read",
                                 hint="convert it to JPEG or PNG") from None
        else:
            raise InputError(f"{ref.label}: not an image kvl can read",
                             hint="use JPEG, PNG, WebP, GIF, BMP or TIFF (HEIC/AVIF with kvl[heif])") from None
    except OSError as exc:
        raise InputError(f"{ref.label}: cannot read the image ({exc})", hint="the file may be damaged") from None
    w, h = img.size
    limit = int(os.environ.get("KVL_MAX_IMAGE_PIXELS") or DEFAULT_MAX_IMAGE_PIXELS)
    if w * h > limit:
        raise InputError(
            f"{ref.label}: {w}x{h} is {w * h / 1e6:.1f} megapixels, over the {limit / 1e6:.1f} MP safety limit",
            hint="downscale it first, or raise KVL_MAX_IMAGE_PIXELS if you trust the file",
        )
    if w < 1 or h < 1:
        raise InputError(f"{ref.label}: the image has no pixels ({w}x{h})")
    return img


def precheck_image(ref: InputRef) -> None:
    """Header-only check: exists, non-empty, a known format, within the size limit."""
    if ref.url is not None:
        return  # fetched when its turn comes
    _open(ref, ref.read_bytes())


def load_image(ref: InputRef, *, max_tokens: int | None = None) -> ImageInput:
    """Decode to RGB, orientation fixed, alpha flattened; downsized to ``max_tokens`` worth of pixels."""
    from PIL import Image, ImageOps

    data = ref.read_bytes()
    img = _open(ref, data)
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF/WebP/TIFF: the first frame
        if max_tokens:
            # JPEG can decode at 1/2, 1/4, 1/8 scale directly: much faster for large photos
            target = max_tokens * PIXELS_PER_TOKEN
            w, h = img.size
            if w * h > 4 * target and img.format == "JPEG":
                scale = (target / (w * h)) ** 0.5
                img.draft("RGB", (max(28, int(w * scale * 2)), max(28, int(h * scale * 2))))
        img.load()
        img = ImageOps.exif_transpose(img) or img
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba).convert("RGB")
        elif img.mode != "RGB":
            img = img.convert("RGB")
        img = _fit(img, max_tokens)
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{ref.label}: the image is damaged ({exc})", hint="re-export or re-download it") from None
    return _to_input(img, ref.label)


def _fit(img, max_tokens: int | None):  # type: ignore[no-untyped-def]
    """Downsize to about ``max_tokens`` image tokens: the encoder would resize it there anyway."""
    from PIL import Image

    if not max_tokens:
        return img
    w, h = img.size
    target = max_tokens * PIXELS_PER_TOKEN
    if w * h <= target:
        return img
    scale = (target / (w * h)) ** 0.5
    return img.resize((max(28, round(w * scale)), max(28, round(h * scale))), Image.Resampling.LANCZOS)


def _to_input(img, label: str) -> ImageInput:  # type: ignore[no-untyped-def]
    rgb = img.tobytes()
    digest = hashlib.sha256(rgb).hexdigest()[:32] + f"-{img.width}x{img.height}"
    return ImageInput(rgb=rgb, width=img.width, height=img.height, id=digest, label=label)


def image_from_array(array, *, label: str, max_tokens: int | None = None) -> ImageInput:  # type: ignore[no-untyped-def]
    """An RGB ``numpy`` array (a video frame) as an engine image, downsized to the token budget."""
    from PIL import Image

    img = Image.fromarray(array, "RGB")
    return _to_input(_fit(img, max_tokens), label)
