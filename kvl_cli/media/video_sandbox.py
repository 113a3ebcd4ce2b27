"""Video probing, frame sampling and scene detection in kvl's decoder process (see ``sandbox``).

The same operations as ``video.probe``, ``video.FrameSampler`` and ``video.detect_scenes``, with
what they return checked on the way back: a crash of OpenCV's FFmpeg on a damaged or hostile file
is that video's InputError (exit 3), and the batch goes on. With ``KVL_SANDBOX=0`` they run here.
Frames come back one message at a time, so the helper holds one decoded frame, as ``FrameSampler``
does; the caller keeps the sampled ones (at most ``--max-frames``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..limits import max_input_bytes
from . import sandbox
from .decode import pixel_limit
from .scenes import detect_scenes
from .video import Frame, FrameSampler, Scene, VideoInfo
from .video import probe as probe_here


@dataclass
class Sampled:
    """What ``FrameSampler`` gives and tells: the frames, the warning, how many frames were decoded."""

    frames: list[Frame]
    warning: str | None = None
    decoded: int = 0
    missing: int = 0


def _ask(path: Path, op: str, header: dict[str, Any]) -> list[tuple[dict[str, Any], bytes]]:
    pixels = pixel_limit()
    return sandbox.decoder().request(str(path), op, {"label": str(path), **sandbox.where(path), **header},
                                     cap=sandbox.memory_cap(pixels, max_input_bytes()), timeout=sandbox.VIDEO_TIMEOUT_S,
                                     max_payload=3 * pixels)


def _info_header(info: VideoInfo) -> dict[str, Any]:
    return {"info": {"fps": info.fps, "frames": info.frames, "duration": info.duration, "width": info.width,
                     "height": info.height}}


def _malformed(path: Path) -> InputError:
    return InputError(f"{path}: the video decoder gave a malformed answer", hint="report it")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(value)
    return float(value)


def probe(path: Path) -> VideoInfo:
    """Frame rate, frame count, duration and size (see ``video.probe``)."""
    if not sandbox.enabled():
        return probe_here(path)
    done, _ = _ask(path, "video.probe", {})[-1]
    try:
        return VideoInfo(path, _number(done["fps"]), int(_number(done["frames"])), _number(done["duration"]),
                         int(_number(done["width"])), int(_number(done["height"])))
    except (KeyError, ValueError, OverflowError):
        raise _malformed(path) from None


def sample(path: Path, info: VideoInfo, *, fps: float | None = None, max_frames: int = 16,
           start: float | None = None, end: float | None = None) -> Sampled:
    """The frames ``FrameSampler`` would yield, and its warning."""
    if not sandbox.enabled():
        sampler = FrameSampler(path, fps=fps, max_frames=max_frames, start=start, end=end, info=info)
        frames = list(sampler)
        return Sampled(frames, sampler.warning, sampler.decoded, sampler.missing)
    replies = _ask(path, "video.frames", {"fps": fps, "max_frames": max_frames, "start": start, "end": end,
                                          **_info_header(info)})
    try:
        frames = [_frame(header, rgb) for header, rgb in replies[:-1]]
        done = replies[-1][0]
        warning = done.get("warning")
        return Sampled(frames, warning if isinstance(warning, str) else None, int(_number(done["decoded"])),
                       int(_number(done["missing"])))
    except (KeyError, ValueError, OverflowError):
        raise _malformed(path) from None


def _frame(header: dict[str, Any], rgb: bytes) -> Frame:
    import numpy as np

    w, h = int(_number(header["width"])), int(_number(header["height"]))
    if w <= 0 or h <= 0 or len(rgb) != w * h * 3:
        raise ValueError("frame size")
    return Frame(time=_number(header["frame"]), rgb=np.frombuffer(rgb, np.uint8).reshape(h, w, 3))


def scenes(path: Path, info: VideoInfo, *, detector: str = "adaptive", threshold: float | None = None,
           start: float | None = None, end: float | None = None) -> list[Scene]:
    """The scenes ``detect_scenes`` finds."""
    if not sandbox.enabled():
        return detect_scenes(path, detector=detector, threshold=threshold, start=start, end=end, info=info)
    done, _ = _ask(path, "video.scenes", {"detector": detector, "threshold": threshold, "start": start,
                                          "end": end, **_info_header(info)})[-1]
    try:
        return [Scene(int(_number(i)), _number(a), _number(b)) for i, a, b in done["scenes"]]
    except (KeyError, ValueError, TypeError, OverflowError):
        raise _malformed(path) from None
