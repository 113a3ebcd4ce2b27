"""Generated video clips: ``write_video`` (three flat colours, hard cuts at 2 s and 4 s) for the tests
that need any short video, and the clips for scene detection: shots, cuts, fades, dissolves and camera motion.

Each shot is a colour with a smooth texture on it; colours are chosen by hue and luma (BT.601), so
"same brightness, other hue" means what it says. Written with OpenCV's mp4v encoder, never committed.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

COLORS = [(30, 30, 220), (220, 250, 220), (90, 10, 10)]  # BGR; cuts at 2 s and 4 s at 10 fps


def write_video(path: Path, seconds: float = 6.0, fps: int = 10, size=(160, 120), segment: float = 2.0) -> Path:
    """Flat colour segments of ``segment`` seconds each (the COLORS in turn): with the defaults, 60 frames
    of 160x120 at 10 fps, three scenes."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(int(seconds * fps)):
        color = COLORS[int(i / fps / segment) % len(COLORS)]
        w.write(np.full((size[1], size[0], 3), color, np.uint8))
    w.release()
    return path


@dataclass(frozen=True)
class Canvas:
    width: int = 160
    height: int = 90
    fps: int = 15

    def frames(self, seconds: float) -> int:
        return int(round(seconds * self.fps))

    def texture(self, seed: int, kind: str = "blobs") -> Any:
        """A float image in [0, 1]: smooth blobs, or a checkerboard / stripes of even mean."""
        w, h = self.width, self.height
        if kind == "blobs":
            small = np.random.default_rng(seed).random((9, 16))
            return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        yy, xx = np.mgrid[0:h, 0:w]
        cell = max(4, h // 6)
        pattern = {"checker": (yy // cell + xx // cell) % 2, "stripes": (yy // (cell // 2)) % 2,
                   "columns": (xx // cell) % 2}[kind]
        return pattern.astype(float)

    def shot(self, hue: float, luma: float, texture: Any, amp: float = 30.0) -> Any:
        """A BGR frame: the colour of ``hue`` (degrees) at ``luma``, shaded by ``texture``."""
        r, g, b = colorsys.hsv_to_rgb(hue / 360.0, 1.0, 1.0)
        k = luma / (0.299 * r + 0.587 * g + 0.114 * b)
        base = np.array([b * k, g * k, r * k])
        return np.clip(base[None, None, :] + (texture[..., None] - 0.5) * amp, 0, 255).astype(np.uint8)

    def grey(self, level: float, texture: Any, amp: float = 30.0) -> Any:
        return np.clip(level + (texture[..., None] - 0.5) * amp, 0, 255).repeat(3, axis=2).astype(np.uint8)

    def hold(self, frame: Any, seconds: float) -> list[Any]:
        return [frame] * self.frames(seconds)

    def fade(self, frame: Any, seconds: float, *, into: bool) -> list[Any]:
        n = self.frames(seconds)
        gains = [(i + 1) / n for i in range(n)] if into else [1 - (i + 1) / n for i in range(n)]
        return [(frame * g).astype(np.uint8) for g in gains]

    def dissolve(self, a: Any, b: Any, seconds: float) -> list[Any]:
        n = self.frames(seconds)
        return [cv2.addWeighted(a, 1 - (i + 1) / (n + 1), b, (i + 1) / (n + 1), 0) for i in range(n)]

    def pan(self, seconds: float, speed: float, seed: int = 9) -> list[Any]:
        """The camera moving ``speed`` pixels a frame across one wide textured picture."""
        n = self.frames(seconds)
        world_w = self.width + int(speed * n) + 1
        blobs = np.random.default_rng(seed).random((max(4, self.height // 3), max(8, world_w // 10)))
        tex = cv2.resize(blobs, (world_w, self.height), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        world = self.shot(100, 120, tex, amp=120)
        return [world[:, int(i * speed):int(i * speed) + self.width].copy() for i in range(n)]

    def write(self, path: Path, frames: Sequence[Any]) -> Path:
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (self.width, self.height))
        for f in frames:
            w.write(f)
        w.release()
        return path


def write_clips(folder: Path, c: Canvas = Canvas()) -> dict[str, Path]:
    """The test clips; the comment on each says where its cuts are."""
    t = c.texture(1)
    green, cyan, violet = (c.shot(h, 120, t) for h in (120, 185, 275))  # one luma, three hues
    a, b = c.shot(30, 150, c.texture(3)), c.shot(210, 100, c.texture(4))
    checker, stripes, columns = (c.grey(128, c.texture(0, k), amp=128) for k in ("checker", "stripes", "columns"))
    clips = {
        # cuts at 2 s and 4 s
        "brightness": c.hold(c.grey(40, t), 2) + c.hold(c.grey(200, t), 2) + c.hold(c.grey(110, t), 2),
        "hue": c.hold(green, 2) + c.hold(cyan, 2) + c.hold(violet, 2),
        "texture": c.hold(checker, 2) + c.hold(stripes, 2) + c.hold(columns, 2),
        # out 2.0-2.5 s, black 2.5-3.5 s, in 3.5-4.0 s: one cut near 3.0 s
        "fade": c.hold(a, 2) + c.fade(a, 0.5, into=False) + c.hold(a * 0, 1.0) + c.fade(b, 0.5, into=True)
        + c.hold(b, 2),
        # 2.0-3.0 s: one cut inside
        "dissolve": c.hold(a, 2) + c.dissolve(a, b, 1.0) + c.hold(b, 2),
        # no cut
        "pan": c.pan(5, speed=4),
        "fade_ends": c.fade(a, 0.5, into=True) + c.hold(a, 2) + c.fade(a, 0.5, into=False) + c.hold(a * 0, 0.5),
    }
    return {name: c.write(folder / f"{name}.mp4", frames) for name, frames in clips.items()}
