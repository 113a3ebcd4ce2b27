"""``kvl locate --draw FILE|DIR``: each image written again with its numbered boxes (or points) and
labels drawn, the size of the original as a person sees it (EXIF orientation applied), never over an
input. Where each drawing goes is decided, and checked, before anything loads."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..engine.types import Result
from ..errors import DiskError, InputError, UsageError
from ..media.images import InputRef

COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60)]


def _writable_suffix(path: Path) -> bool:
    from PIL import Image

    Image.init()
    return path.suffix.lower() in Image.registered_extensions() and \
        Image.registered_extensions()[path.suffix.lower()] in Image.SAVE


def draw_targets(refs: list[InputRef], draw: str) -> dict[str, Path]:
    """Where each input's drawing goes: ``draw`` itself for one input (unless it is a folder), else
    ``DIR/<name>-boxes.<ext>`` (PNG for stdin and URLs). UsageError for a missing folder, a format
    Pillow cannot write, or a drawing that would replace an input."""
    target = Path(draw).expanduser()
    into_dir = target.is_dir() or draw.endswith(("/", "\\")) or len(refs) > 1
    if into_dir and not target.is_dir():
        raise UsageError(f"--draw {draw}: no such folder", hint="create it first, or give a file name for one image")
    if not into_dir and not target.parent.is_dir():
        raise UsageError(f"--draw {draw}: the folder {target.parent} does not exist", hint="create it first")
    if not into_dir and not _writable_suffix(target):
        raise UsageError(f"--draw {draw}: not an image format kvl can write", hint="end the name in .png or .jpg")
    targets: dict[str, Path] = {}
    taken: set[Path] = set()
    for ref in refs:
        path = _in_folder(target, ref, taken) if into_dir else target
        taken.add(path)
        targets[ref.label] = path
    inputs = {ref.path.resolve() for ref in refs if ref.path is not None}
    for path in targets.values():
        if path.resolve() in inputs:
            raise UsageError(f"--draw {draw}: {path} is an input; kvl never writes over one",
                             hint="draw into another file or folder")
    return targets


def _in_folder(folder: Path, ref: InputRef, taken: set[Path]) -> Path:
    name = ref.path.name if ref.path is not None else (ref.url or "").split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    stem, suffix = (Path(name).stem or "stdin"), Path(name).suffix.lower()
    if not _writable_suffix(Path(f"x{suffix}")):
        suffix = ".png"
    path, n = folder / f"{stem}-boxes{suffix}", 1
    while path in taken:
        n += 1
        path = folder / f"{stem}-boxes-{n}{suffix}"
    return path


def draw_objects(source: Path | bytes, objects: list[dict[str, Any]], label: str) -> Any:
    """The source image (EXIF orientation applied, RGB) with each object's box or point, its number
    and label drawn."""
    from PIL import Image, ImageDraw, ImageOps

    try:
        opened = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
        img = (ImageOps.exif_transpose(opened) or opened).convert("RGB")
    except Exception as exc:  # it was decoded once already; a file changed since is this input's problem
        raise InputError(f"{label}: cannot read it again to draw on it ({type(exc).__name__})",
                         hint="leave the file in place until kvl locate is done") from None
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
        text = f"{i} {obj['label']}"
        left, top, right, bottom = pen.textbbox(anchor, text)
        ty = max(0, top - (bottom - top) - 2)
        pen.rectangle((left, ty, right + 4, ty + (bottom - top) + 4), fill=colour)
        pen.text((left + 2, ty + 1), text, fill=(255, 255, 255))
    return img


class DrawSink:
    """A ``RecordSink``: draws each finished input's objects into its target (``draw_targets``)."""

    def __init__(self, targets: dict[str, Path], sources: dict[str, Path | bytes]) -> None:
        self.targets = targets
        self.sources = sources  # filled as images are decoded (``GeometryKeeper``)

    def write(self, label: str, result: Result, meta: dict[str, Any]) -> None:
        if label not in self.targets or label not in self.sources or "objects" not in meta:
            return
        img = draw_objects(self.sources.pop(label), meta["objects"], label)
        path = self.targets[label]
        try:
            img.save(path)
        except OSError as exc:
            raise DiskError(f"{label}: cannot write {path}: {exc.strerror or exc}",
                            hint="check the folder given to --draw") from None
