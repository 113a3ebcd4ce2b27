"""``kvl locate --draw FILE|DIR``: each image written again with its numbered boxes (or points) and
labels drawn, the size of the original as a person sees it (EXIF orientation applied; a document's
page as it was rendered for the model), never over an input (a hard link to one included). Where each
drawing goes is decided, and checked (the format must keep an RGB image's size), before anything
loads. A drawing is marked as kvl's (``MARK``: a PNG text chunk, else a comment or EXIF), so that a
folder drawn into can be located again: kvl's drawings there are not inputs, and may be replaced."""

from __future__ import annotations

import io
import os
from functools import cache
from pathlib import Path
from typing import Any

from ..engine.types import Result
from ..errors import DiskError, UsageError
from ..media.decode import pixel_limit
from ..media.images import InputRef
from ..safetext import one_line

COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60)]


MARK = "kvl-locate"  # the text chunk (PNG), comment (JPEG) or EXIF description every drawing carries
IMAGE_DESCRIPTION = 0x010E
Source = Path | bytes | tuple[int, int, bytes]  # a file, its bytes, or a rendered page (width, height, RGB)


@cache
def _writable_suffix(suffix: str) -> bool:
    """Whether Pillow writes an RGB image under this extension and keeps its size (``.xbm``, ``.msp``,
    ``.palm`` write no RGB; ``.ico`` shrinks to 256 px at most): tried on a small wide image."""
    from PIL import Image

    Image.init()
    fmt = Image.registered_extensions().get(suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        return False
    probe, buf = Image.new("RGB", (300, 17), (1, 2, 3)), io.BytesIO()
    try:
        probe.save(buf, format=fmt)
    except Exception:  # noqa: BLE001 - any failure of Pillow's writer: not a format for a drawing
        return False
    buf.seek(0)
    try:
        with Image.open(buf) as back:
            return bool(back.size == probe.size)
    except Exception:  # noqa: BLE001 - written, but not a format Pillow reads back (.pdf): as written
        return True


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # a hard link, a symlink, another spelling of one file
    except OSError:
        return False


Key = tuple[str, int | None]  # an input's label and its page (None: an image)


def ref_key(ref: InputRef) -> Key:
    return ref.label, ref.page.number if ref.page is not None else None


def draw_targets(refs: list[InputRef], draw: str) -> dict[Key, Path]:
    """Where each input's drawing goes: ``draw`` itself for one input (unless it is a folder), else
    ``DIR/<name>-boxes.<ext>`` (PNG for stdin and URLs). UsageError for a missing folder, a format
    Pillow cannot write, or a drawing that would replace an input."""
    if not draw.strip():
        raise UsageError("--draw needs a file or folder name", hint="e.g. --draw boxes.png, or --draw boxes/")
    target = Path(draw).expanduser()
    into_dir = target.is_dir() or draw.endswith(("/", "\\")) or len(refs) > 1
    if into_dir and not target.is_dir():
        several = f" ({len(refs)} images or pages are drawn into a folder)" if len(refs) > 1 else ""
        raise UsageError(f"--draw {draw}: no such folder{several}",
                         hint="create it first, or give a file name for one image (one page: --pages)")
    if not into_dir and not target.parent.is_dir():
        raise UsageError(f"--draw {draw}: the folder {target.parent} does not exist", hint="create it first")
    if not into_dir and not _writable_suffix(target.suffix):
        raise UsageError(f"--draw {draw}: not an image format kvl can write an RGB drawing in at its size",
                         hint="end the name in .png or .jpg")
    targets: dict[Key, Path] = {}
    taken: set[Path] = set()
    for ref in refs:
        path = _in_folder(target, ref, taken) if into_dir else target
        taken.add(path)
        targets[ref_key(ref)] = path
    inputs = [ref.path for ref in refs if ref.path is not None]
    for path in targets.values():
        if path.exists() and any(_same_file(path, p) for p in inputs):
            raise UsageError(f"--draw {draw}: {path} is an input; kvl never writes over one",
                             hint="draw into another file or folder")
    return targets


def _in_folder(folder: Path, ref: InputRef, taken: set[Path]) -> Path:
    """``NAME-boxes.EXT``; a document's page ``NAME-pN-boxes.png``."""
    name = ref.path.name if ref.path is not None else (ref.url or "").split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    stem, suffix = (Path(name).stem or "stdin"), Path(name).suffix.lower()
    if ref.page is not None:
        stem, suffix = f"{stem}-p{ref.page.number}", ".png"
    if not _writable_suffix(suffix):
        suffix = ".png"
    path, n = folder / f"{stem}-boxes{suffix}", 1
    while path in taken:
        n += 1
        path = folder / f"{stem}-boxes-{n}{suffix}"
    return path


def draw_objects(source: Source, objects: list[dict[str, Any]], label: str) -> Any:
    """The source image (EXIF orientation applied, RGB; 16-bit greys scaled to 8 bits) with each
    object's box or point, its number and label drawn."""
    from PIL import ImageDraw

    img = _reopened(source, label)
    pen = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 200))
    radius = max(4, width * 3)
    for i, obj in enumerate(objects, 1):
        colour = COLOURS[(i - 1) % len(COLOURS)]
        if obj.get("box"):
            x0, y0, x1, y1 = obj["box"]
            pen.rectangle((x0, y0, x1, y1), outline=colour, width=width)
            anchor = (x0, y0)
        else:
            x, y = obj["point"]
            pen.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour, width=width)
            anchor = (x + radius, y - radius)
        _label(pen, anchor, f"{i} {one_line(str(obj['label']))}", colour)
    return img


def _reopened(source: Source, label: str) -> Any:
    """The image to draw on: a page as rendered, or the file read again within kvl's own pixel limit
    (``KVL_MAX_IMAGE_PIXELS``, not Pillow's), upright and RGB. DiskError (the drawing cannot be made:
    the answers were given already) if it cannot be read again."""
    from PIL import Image, ImageOps

    if isinstance(source, tuple):
        width, height, rgb = source
        return Image.frombytes("RGB", (width, height), rgb)
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # kvl checks the size itself, below
    try:
        opened = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
        if opened.width * opened.height > pixel_limit():
            raise ValueError("over KVL_MAX_IMAGE_PIXELS")
        img = ImageOps.exif_transpose(opened) or opened
        return _rgb(img)
    except Exception as exc:  # noqa: BLE001 - it was decoded once already: a file changed since
        raise DiskError(f"{label}: cannot read it again to draw on it ({type(exc).__name__}); its answer stands",
                        hint="leave the file in place until kvl locate is done") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _rgb(img: Any) -> Any:
    """RGB, a 16-bit (or 32-bit) grey scaled into 8 bits rather than clipped at 255."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        top = 65535 if img.mode.startswith("I;16") else max(1, (img.getextrema() or (0, 1))[1])
        img = img.convert("I").point(lambda v: v * (255 / top)).convert("L")
    return img.convert("RGB")


def _label(pen: Any, anchor: tuple[int, int], text: str, colour: tuple[int, int, int]) -> None:
    """The number and label on a filled strip above ``anchor`` (ASCII if the font lacks a character:
    an older Pillow's built-in font is Latin-1 only)."""
    try:
        left, top, right, bottom = pen.textbbox(anchor, text)
    except UnicodeError:
        text = text.encode("ascii", "replace").decode("ascii")
        left, top, right, bottom = pen.textbbox(anchor, text)
    ty = max(0, top - (bottom - top) - 2)
    pen.rectangle((left, ty, right + 4, ty + (bottom - top) + 4), fill=colour)
    pen.text((left + 2, ty + 1), text, fill=(255, 255, 255))


def save_marked(img: Any, path: Path) -> None:
    """``img`` saved to ``path`` (its extension picks the format), marked as kvl's drawing: written
    beside it, then renamed over it, so that a file replaced is never half written, and a name that
    is a hard link to another file gets a file of its own rather than writing into that one."""
    from PIL import Image, PngImagePlugin

    fmt = Image.registered_extensions()[path.suffix.lower()]
    tmp = path.with_name(f".{path.name}.kvl-{os.getpid()}")
    try:
        if fmt == "PNG":
            info = PngImagePlugin.PngInfo()
            info.add_text(MARK, "1")
            img.save(tmp, format=fmt, pnginfo=info)
        else:
            exif = img.getexif()
            exif[IMAGE_DESCRIPTION] = MARK  # JPEG, WebP, TIFF keep it; a format without EXIF drops it (unmarked)
            img.save(tmp, format=fmt, exif=exif, comment=MARK.encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_drawing(path: Path) -> bool:
    """Whether ``path`` is a drawing kvl locate wrote (``NAME-boxes.EXT`` carrying ``MARK``)."""
    if "-boxes" not in path.stem:
        return False
    from PIL import Image

    try:
        with Image.open(path) as img:
            return MARK in getattr(img, "text", {}) or img.info.get("comment") == MARK.encode() or \
                img.getexif().get(IMAGE_DESCRIPTION) == MARK
    except Exception:  # noqa: BLE001 - not an image kvl can read: not one of kvl's drawings
        return False


def without_drawings(refs: list[InputRef], draw: str | None) -> tuple[list[InputRef], int]:
    """The inputs less kvl's own drawings in the folder ``--draw`` draws into (a rerun into the same
    folder would otherwise draw on its drawings, or refuse to replace them); how many were left out."""
    if draw is None or not draw.strip() or not Path(draw).expanduser().is_dir():
        return refs, 0
    folder = Path(draw).expanduser()
    kept = [ref for ref in refs if ref.path is None or not _same_file(ref.path.parent, folder)
            or not is_drawing(ref.path)]
    return kept, len(refs) - len(kept)


class DrawSink:
    """A ``RecordSink``: draws each finished input's objects into its target (``draw_targets``)."""

    def __init__(self, targets: dict[Key, Path], sources: dict[Key, Source]) -> None:
        self.targets = targets
        self.sources = sources  # filled as images are decoded (``GeometryKeeper``)

    def write(self, label: str, result: Result, meta: dict[str, Any]) -> None:
        page = meta.get("page")
        key = (label, page if isinstance(page, int) else None)
        if key not in self.targets or key not in self.sources or "objects" not in meta:
            return
        img = draw_objects(self.sources.pop(key), meta["objects"], label)
        path = self.targets[key]
        try:
            save_marked(img, path)
        except (OSError, ValueError) as exc:
            raise DiskError(f"{label}: cannot write {path}: {getattr(exc, 'strerror', None) or exc}",
                            hint="check the folder given to --draw") from None
