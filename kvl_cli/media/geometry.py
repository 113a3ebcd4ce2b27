"""Where a point the model names lies in the original image.

The model sees neither the file's pixels nor kvl's decoded image but the vision encoder's canvas:
libmtmd (``mtmd_image_preprocessor_dyn_size``, the Kimi-VL projector's) fits the decoded image into a
canvas whose sides are multiples of 28 px (one image token per 28x28 px) within the projector's token
limits (``img_tool::calc_size_preserved_ratio``), scales the image by the smaller of the two ratios
(bicubic) and centres it on that canvas, padding the rest (``PAD_CEIL``). kvl itself scaled the file
down to the token budget before (``decode.fit``), after applying its EXIF orientation. A fraction of the
canvas is mapped back through all three steps, here, to pixels of the image as a person sees it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALIGN = 28  # patch 14, 2x2 merge
DEFAULT_MIN_TOKENS = 8  # libmtmd's limits for the Kimi-VL projector
DEFAULT_MAX_TOKENS = 1024


def encoder_canvas(width: int, height: int, min_tokens: int | None, max_tokens: int | None) -> tuple[int, int]:
    """libmtmd's canvas for a ``width`` x ``height`` image (``calc_size_preserved_ratio``)."""
    min_px = (min_tokens or DEFAULT_MIN_TOKENS) * ALIGN * ALIGN
    max_px = (max_tokens or DEFAULT_MAX_TOKENS) * ALIGN * ALIGN
    w_bar = max(ALIGN, math.floor(width / ALIGN + 0.5) * ALIGN)  # C's round: halves away from zero
    h_bar = max(ALIGN, math.floor(height / ALIGN + 0.5) * ALIGN)
    if w_bar * h_bar > max_px:
        beta = math.sqrt(height * width / max_px)
        h_bar = max(ALIGN, math.floor(height / beta / ALIGN) * ALIGN)
        w_bar = max(ALIGN, math.floor(width / beta / ALIGN) * ALIGN)
    elif w_bar * h_bar < min_px:
        beta = math.sqrt(min_px / (height * width))
        h_bar = math.ceil(height * beta / ALIGN) * ALIGN
        w_bar = math.ceil(width * beta / ALIGN) * ALIGN
    return w_bar, h_bar


@dataclass(frozen=True)
class ImageGeometry:
    """One image's way to the model: its size as a person sees it (``source``), as kvl decoded it for
    the encoder (``decoded``), and the encoder's token limits."""

    source: tuple[int, int]
    decoded: tuple[int, int]
    min_tokens: int | None = None
    max_tokens: int | None = None

    @property
    def canvas(self) -> tuple[int, int]:
        return encoder_canvas(*self.decoded, self.min_tokens, self.max_tokens)

    @property
    def content(self) -> tuple[float, float, int, int]:
        """(left, top, width, height) of the image on the canvas; the rest is padding."""
        (cw, ch), (w, h) = self.canvas, self.decoded
        if (cw, ch) == (w, h):
            return 0, 0, w, h
        scale = min(cw / w, ch / h)
        nw, nh = min(math.ceil(w * scale), cw), min(math.ceil(h * scale), ch)
        return (cw - nw) // 2, (ch - nh) // 2, nw, nh

    def to_source(self, fx: float, fy: float) -> tuple[float, float]:
        """A point given as fractions of what the model saw, in source pixels (clamped into the image)."""
        (cw, ch), (left, top, nw, nh) = self.canvas, self.content
        sw, sh = self.source
        x = (fx * cw - left) / nw * sw
        y = (fy * ch - top) / nh * sh
        return min(max(x, 0.0), float(sw)), min(max(y, 0.0), float(sh))
