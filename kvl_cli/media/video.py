"""Video: frames sampled as a stream (a two-hour film never sits in memory), scenes, subtitles.

``FrameSampler`` reads a video once, front to back, grabbing every frame cheaply and decoding to
pixels only the ones it keeps, so memory holds one frame at a time. Timestamps come from the
container (``CAP_PROP_POS_MSEC``), which keeps variable-frame-rate videos right; when the
duration is missing from the metadata, it is measured by reading. A damaged file that gives only some
of the wanted frames says how many (``FrameSampler.warning``); one that gives none is an InputError.

FFmpeg's own log lines ("moov atom not found", decoder errors) are silenced: kvl says what went wrong
in one sentence. Set ``OPENCV_FFMPEG_LOGLEVEL=32`` (and ``OPENCV_LOG_LEVEL=INFO``) to see them again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError
from .images import IMAGE_EXTENSIONS

VIDEO_LIKE_IMAGES = {".gif"}  # an animated GIF counts as a video


def quiet_native_logs() -> None:
    """Keep FFmpeg's and OpenCV's own lines off stderr (a user's own setting wins).

    OpenCV reads OPENCV_FFMPEG_LOGLEVEL once, when its FFmpeg backend first starts (a VideoCapture or
    VideoWriter), so this must run before cv2 touches any video; importing this module does it."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")


quiet_native_logs()


def parse_time(value: str | None) -> float | None:
    """'65', '1:05', '00:01:05.5' -> seconds."""
    if value is None or value == "":
        return None
    if not re.fullmatch(r"\d+(:\d{1,2}){0,2}(\.\d+)?", value.strip()):
        raise UsageError(f"'{value}' is not a time", hint="use seconds (65), MM:SS (1:05) or HH:MM:SS(.ms)")
    seconds = 0.0
    for part in value.strip().split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def stamp(seconds: float) -> str:
    """The timestamp shown to the model between frames: [HH:MM:SS]."""
    s = int(seconds)
    return f"[{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}]"


def subtitle_time(seconds: float, sep: str = ",") -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms % 3600000 // 60000:02d}:{ms % 60000 // 1000:02d}{sep}{ms % 1000:03d}"


@dataclass
class VideoInfo:
    path: Path
    fps: float
    frames: int
    duration: float
    width: int
    height: int


@dataclass
class Frame:
    time: float  # seconds from the start of the video
    rgb: Any  # numpy array HxWx3 uint8


def _open(path: Path) -> Any:
    quiet_native_logs()
    import cv2

    if path.suffix.lower() in IMAGE_EXTENSIONS - VIDEO_LIKE_IMAGES:
        raise InputError(f"{path}: this is an image, not a video", hint="use `kvl caption` or `kvl ask` for images")
    if not path.exists():
        raise InputError(f"{path}: file not found", hint="check the path")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes)", hint="check that it was written completely")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise InputError(f"{path}: not a video kvl can read",
                         hint="use mp4 (H.264), webm, mov, mkv or avi, or convert it with ffmpeg")
    return cap


def probe(path: Path) -> VideoInfo:
    """Frame rate, frame count and duration; measured by reading when the metadata lacks them."""
    import cv2

    cap = _open(path)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        duration = frames / fps if fps > 0 and frames > 0 else 0.0
        if duration <= 0 or fps <= 0 or fps > 1000:
            n, last = 0, 0.0
            while cap.grab():
                n += 1
                last = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if n == 0:
                raise InputError(f"{path}: the video has no frames", hint="the file may be damaged or empty")
            fps = fps if 0 < fps <= 1000 else (n / last if last > 0 else 1.0)
            frames, duration = n, max(last, n / fps)
        if frames <= 0:
            raise InputError(f"{path}: the video has no frames", hint="the file may be damaged or empty")
        return VideoInfo(path, fps, frames, duration, w, h)
    finally:
        cap.release()


def target_times(start: float, end: float, *, fps: float | None, max_frames: int) -> list[float]:
    """When to take frames: every 1/fps seconds, or uniformly (segment midpoints); at most max_frames."""
    span = max(0.0, end - start)
    if fps:
        times = [start + k / fps for k in range(int(span * fps) + 1) if start + k / fps < end]
        if len(times) > max_frames:
            step = len(times) / max_frames
            times = [times[int(i * step)] for i in range(max_frames)]
        return times or [start]
    n = max(1, max_frames)
    return [start + (k + 0.5) * span / n for k in range(n)]


class FrameSampler:
    """Yield ``Frame``s at the target times, reading the video once; one decoded frame in memory.

    After iterating, ``missing`` counts the target times no frame could be decoded for (the stream
    ended early: a damaged file) and ``warning`` says so in a sentence; no frame at all raises
    InputError."""

    def __init__(self, path: Path, *, fps: float | None = None, max_frames: int = 16,
                 start: float | None = None, end: float | None = None, info: VideoInfo | None = None) -> None:
        self.path = path
        self.info = info or probe(path)
        self.start = start or 0.0
        self.end = min(end, self.info.duration) if end is not None else self.info.duration
        if self.start >= self.info.duration:
            raise InputError(f"{path}: --start {self.start:g} s is past the end of the video "
                             f"({self.info.duration:.1f} s)", hint="choose an earlier start")
        if self.end <= self.start:
            raise InputError(f"{path}: the range {self.start:g}–{self.end:g} s holds no frames",
                             hint="make --end later than --start")
        self.times = target_times(self.start, self.end, fps=fps, max_frames=max_frames)
        self.wanted = len(self.times)  # target times
        self.missing = 0  # target times left without a frame when the stream ended
        self.decoded = 0  # frames grabbed (decoded by the codec), for the frames/s measurement
        self._last = self.start  # time of the last frame yielded

    @property
    def warning(self) -> str | None:
        """One sentence for stderr when some target times got no frame, else None."""
        if not self.missing:
            return None
        got = self.wanted - self.missing
        return (f"{self.path}: only {got} of {self.wanted} frames could be decoded (nothing after "
                f"{self._last:.1f} s: the file looks damaged)")

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        cap = _open(self.path)
        pending = list(self.times)
        try:
            if self.start > 0:
                cap.set(cv2.CAP_PROP_POS_MSEC, max(0.0, self.start * 1000 - 1000))
            # a frame is shown during [t, t + frame_len); the epsilon keeps float error out of the boundary
            frame_len = (1.0 / self.info.fps if self.info.fps > 0 else 0.0) - 1e-3
            while pending and cap.grab():
                self.decoded += 1
                t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                # this frame covers [t, t + frame_len): take it for every target it covers
                if t + frame_len <= pending[0]:
                    continue
                ok, bgr = cap.retrieve()
                if not ok:
                    continue
                while pending and t + frame_len > pending[0]:
                    pending.pop(0)  # one frame serves every target it covers (fps above the video's)
                self._last = t
                yield Frame(time=t, rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            cap.release()
        self.missing = len(pending)
        if self.missing == self.wanted:
            raise self._nothing_decoded()

    def _nothing_decoded(self) -> InputError:
        declared = f"{self.decoded} of the {self.info.frames} frames it declares" if self.decoded else "no frame"
        return InputError(f"{self.path}: no frames could be decoded",
                          hint=f"the file looks damaged: FFmpeg read {declared}; repair or re-encode it, e.g. "
                               "ffmpeg -i in.mp4 -c:v libx264 out.mp4")


@dataclass
class Scene:
    index: int
    start: float
    end: float
