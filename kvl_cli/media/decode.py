"""Image bytes to pixels, in whatever process runs it: kvl's decoder process (``sandbox``) by default.

``check_header`` reads only what identifies the image (format and size: milliseconds);
``decode_rgb`` decodes, honours EXIF orientation, flattens alpha onto white, takes an animated
image's first frame and downsizes to the pixel budget the vision encoder would use anyway. Both
take a path (a regular file, read within the size limit) or the bytes themselves, and raise only
InputError: a file that makes a decoder raise anything is a damaged file, named with the error.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from ..errors import InputError
from ..limits import is_regular, max_input_bytes, read_file

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's decompression-bomb limit
PIXELS_PER_TOKEN = 28 * 28  # one image token per 28x28 pixels (14 px patches, 2x2 merge)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")

Source = Path | bytes
F = TypeVar("F", bound=Callable[..., Any])


def _quiet(fn: F) -> F:
    """Pillow's warnings about a damaged file ("Corrupt EXIF data", "Truncated File Read") kept
    off stderr: the file's one error line says it. (libtiff prints its own lines from C; those
    go to the decoder process's stderr, which is not kvl's, see ``sandbox``.)"""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


def pixel_limit() -> int:
    """``KVL_MAX_IMAGE_PIXELS``, else Pillow's own decompression-bomb limit."""
    try:
        return int(os.environ.get("KVL_MAX_IMAGE_PIXELS") or DEFAULT_MAX_IMAGE_PIXELS)
    except ValueError:
        return DEFAULT_MAX_IMAGE_PIXELS


def _register_optional_openers() -> bool:
    try:
        import pillow_heif  # type: ignore[import-not-found]
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    if hasattr(pillow_heif, "register_avif_opener"):
        pillow_heif.register_avif_opener()
    return True


def _looks_heif(head: bytes) -> bool:
    return len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _identify(label: str, fp: IO[bytes]) -> Any:
    from PIL import Image, UnidentifiedImageError

    head = fp.read(16)
    if not head:
        raise InputError(f"{label}: the file is empty (0 bytes)", hint="check that it was written completely")
    fp.seek(0)
    try:
        return Image.open(fp)
    except UnidentifiedImageError:
        if head.startswith(b"%PDF-"):  # a document where an image was expected (a file part, a misnamed file)
            raise InputError(f"{label}: a PDF where kvl expected an image",
                             hint="send a PDF as a document: a file named .pdf, or kvl serve's file part") from None
        if not _looks_heif(head):
            raise InputError(f"{label}: not an image kvl can read",
                             hint="use JPEG, PNG, WebP, GIF, BMP or TIFF (HEIC/AVIF with kvl[heif])") from None
        if not _register_optional_openers():
            raise InputError(f"{label}: HEIC/AVIF images need an optional extra",
                             hint="pip install 'kvl[heif]'") from None
    fp.seek(0)
    try:
        return Image.open(fp)
    except UnidentifiedImageError:
        raise InputError(f"{label}: this HEIC/AVIF image could not be read", hint="convert it to JPEG or PNG") from None


def open_image(label: str, fp: IO[bytes], *, pixels: int | None = None) -> Any:
    """The image in ``fp`` (seekable), identified and its size checked, nothing decoded yet."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # kvl checks the size itself, with a clearer message
    try:
        img = _identify(label, fp)
    except InputError:
        raise
    except Exception as exc:  # any decoder failure on untrusted bytes is this file's fault
        raise damaged(label, exc) from None
    w, h = img.size
    limit = pixels or pixel_limit()
    if w * h > limit:
        raise InputError(
            f"{label}: {w}x{h} is {w * h / 1e6:.1f} megapixels, over the {limit / 1e6:.1f} MP safety limit",
            hint="downscale it first, or raise KVL_MAX_IMAGE_PIXELS if you trust the file",
        )
    if w < 1 or h < 1:
        raise InputError(f"{label}: the image has no pixels ({w}x{h})")
    return img


def damaged(label: str, exc: BaseException) -> InputError:
    detail = " ".join(str(exc).split())[:200] or "no detail"
    return InputError(f"{label}: the image is damaged ({type(exc).__name__}: {detail})",
                      hint="re-export or re-download it")


@_quiet
def check_header(label: str, source: Source, *, pixels: int | None = None,
                 byte_limit: int | None = None) -> tuple[int, int]:
    """(width, height) from the header: exists, non-empty, a known format, within the limits. A
    regular file's header only is read (its size is checked from the file system)."""
    if not isinstance(source, Path):
        return open_image(label, io.BytesIO(source), pixels=pixels).size  # type: ignore[no-any-return]
    try:
        with source.open("rb") as f:
            if os.fstat(f.fileno()).st_size > (byte_limit or max_input_bytes()) or not is_regular(source):
                return check_header(label, read_file(source, label, byte_limit), pixels=pixels)
            return open_image(label, f, pixels=pixels).size  # type: ignore[no-any-return]
    except OSError:
        return check_header(label, read_file(source, label, byte_limit), pixels=pixels)  # says what went wrong


def decode_rgb(label: str, source: Source, *, max_tokens: int | None = None, pixels: int | None = None,
               byte_limit: int | None = None) -> Any:
    """Decoded RGB PIL image: first frame, orientation fixed, alpha on white, at most ``max_tokens`` worth."""
    return decode_rgb_sized(label, source, max_tokens=max_tokens, pixels=pixels, byte_limit=byte_limit)[0]


@_quiet
def decode_rgb_sized(label: str, source: Source, *, max_tokens: int | None = None, pixels: int | None = None,
                     byte_limit: int | None = None) -> tuple[Any, tuple[int, int]]:
    """``decode_rgb``'s image and the size of the image as a person sees it: its full size, EXIF
    orientation applied (a phone's portrait photo stored sideways is tall), before any scaling."""
    data = read_file(source, label, byte_limit) if isinstance(source, Path) else source
    img = open_image(label, io.BytesIO(data), pixels=pixels)
    try:
        seen = oriented_size(img)
        return fit(_flatten(_first_frame(img, max_tokens)), max_tokens), seen
    except InputError:
        raise
    except Exception as exc:  # see open_image
        raise damaged(label, exc) from None


_TURNED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def oriented_size(img: Any) -> tuple[int, int]:
    """(width, height) of ``img`` once its EXIF orientation is applied."""
    w, h = img.size
    try:
        turned = img.getexif().get(0x0112) in _TURNED
    except Exception:  # damaged EXIF: exif_transpose ignores it too
        turned = False
    return (h, w) if turned else (w, h)


def _first_frame(img: Any, max_tokens: int | None) -> Any:
    from PIL import ImageOps

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
    return ImageOps.exif_transpose(img) or img


def _flatten(img: Any) -> Any:
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def fit(img: Any, max_tokens: int | None) -> Any:
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
