"""``/add PATH|URL``: a file or URL becomes a media item of the conversation, through kvl's own
media loading (``media.images`` for pictures, ``media.video_sandbox`` for video frames,
``run.documents`` for a PDF's or a multi-page TIFF's pages).

Each kind of media is one entry of ``LOADERS`` (its extensions and the function that loads it):
a document type (PDF pages) is added there, in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.types import ImageInput
from ..errors import ContextError, InputError
from ..media.documents import PDF_EXTENSIONS, TIFF_EXTENSIONS
from ..media.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, InputRef, expand_inputs, load_image
from ..media.video import stamp

MIN_FRAME_TOKENS = 8  # the fewest tokens the projector gives an image (a frame)
VIDEO_FRAMES = 16  # frames sampled from a video added to a chat
PROMPT_ROOM = 512  # tokens kept for the questions and answers around the media


@dataclass
class MediaItem:
    """One thing added to the conversation: an image, or a video's frames (each after its time)."""

    source: str  # as the user gave it: a path or a URL (what a saved conversation reloads)
    kind: str  # "image", "video" (a ``LOADERS`` key)
    images: list[ImageInput] = field(default_factory=list)
    stamps: list[str] = field(default_factory=list)  # per image: text before it (a frame's time)

    def text(self, marker: str) -> str:
        """Its place in the user's message: one marker per image, after its stamp (a frame's time, a
        page's label)."""
        stamps = self.stamps or [""] * len(self.images)
        return "".join(f"{s}{marker}" for s in stamps)

    @property
    def label(self) -> str:
        n = len(self.images)
        unit = {"video": "frames", "document": "pages"}.get(self.kind)
        return f"{self.source} ({n} {unit})" if unit else self.source


@dataclass
class Budget:
    """What the media may take: tokens per image, and the context a video's frames must fit in."""

    image_tokens: int
    n_ctx: int
    max_tokens: int


def _load_image(ref: InputRef, budget: Budget) -> MediaItem:
    try:
        image = load_image(ref, max_tokens=budget.image_tokens)
    finally:
        ref.release()
    return MediaItem(ref.label, "image", [image])


def _load_video(ref: InputRef, budget: Budget) -> MediaItem:
    from ..media import video_sandbox
    from ..run.videos import frame_budget

    if ref.path is None:
        raise InputError(f"{ref.label}: a video must be a local file", hint="download it first, then /add the file")
    need = VIDEO_FRAMES * MIN_FRAME_TOKENS + PROMPT_ROOM + budget.max_tokens
    if need > budget.n_ctx:
        raise ContextError(f"{ref.label}: a video's {VIDEO_FRAMES} frames and the answer need at least {need} tokens "
                           f"but the context holds {budget.n_ctx}",
                           hint="start kvl chat with a larger --ctx, or a smaller --max-tokens")
    info = video_sandbox.probe(ref.path)
    sampled = video_sandbox.sample(ref.path, info, max_frames=VIDEO_FRAMES)
    frames = sampled.frames
    per_frame = frame_budget(len(frames), budget.image_tokens, budget.n_ctx, budget.max_tokens)
    from ..media.images import image_from_array

    images = [image_from_array(f.rgb, label=f"{ref.label}@{f.time:.2f}", max_tokens=per_frame) for f in frames]
    return MediaItem(ref.label, "video", images, [stamp(f.time) for f in frames])


def _load_document(ref: InputRef, budget: Budget) -> MediaItem:
    """Every page, each after its label (``[page 3]``), each page's budget lowered so that they fit
    the context (ContextError saying how many would); a one-page TIFF is an image. ``KVL_PDF_PASSWORD``
    opens an encrypted PDF, as for the other commands."""
    import os

    from ..media.documents import DocumentOptions
    from ..run.documents import expand_documents, fit_pages

    pages, problems, _ = expand_documents([ref], [], DocumentOptions(password=os.environ.get("KVL_PDF_PASSWORD")))
    if problems:
        raise problems[0].error
    try:
        labels, per_page = fit_pages(pages, budget.image_tokens, budget.n_ctx, budget.max_tokens)
    except ContextError as exc:  # its hint names --pages, which /add has not
        raise ContextError(exc.message, hint="start kvl chat with a larger --ctx, or split the document") from None
    if labels is None:
        return _load_image(ref, budget)
    try:
        images = [load_image(page, max_tokens=per_page) for page in pages]
    finally:
        ref.release()
    return MediaItem(ref.label, "document", images, labels)


Loader = Callable[[InputRef, Budget], MediaItem]
# kind -> (extensions, loader); a new kind of media is one more entry
LOADERS: dict[str, tuple[set[str], Loader]] = {
    "document": (PDF_EXTENSIONS | TIFF_EXTENSIONS, _load_document),  # before images: a TIFF may have pages
    "image": (IMAGE_EXTENSIONS, _load_image),
    "video": (VIDEO_EXTENSIONS, _load_video),
}


def kind_of(ref: InputRef) -> str:
    """The kind by the name's extension; an unknown one is tried as an image (the decoder sniffs it)."""
    for kind, (exts, _) in LOADERS.items():
        if ref.suffix in exts:
            return kind
    return "image"


def attach(source: str, budget: Budget) -> MediaItem:
    """Load ``source`` (a path or an http(s) URL); InputError (missing, unreadable, not media) or
    ContextError (a video or a document too long for the context) say why not."""
    source = source.strip()
    if not source:
        raise InputError("/add needs a file or a URL", hint="/add photo.jpg")
    path = Path(source).expanduser()
    if not source.startswith(("http://", "https://")) and not path.exists():
        raise InputError(f"{source}: file not found", hint="check the path")
    refs, problems = expand_inputs([source], video=True)
    if problems:
        raise problems[0].error
    if len(refs) != 1:
        raise InputError(f"{source}: names {len(refs)} files", hint="add them one at a time")
    ref = refs[0]
    return LOADERS[kind_of(ref)][1](ref, budget)
