"""Video tasks over the engine: a summary of sampled frames, or captions scene by scene.

Frames go to the model in order, each after its timestamp (``[00:01:05]``), so answers can cite
times. Scene captions are worked on like a batch (several scenes at once) and written in scene
order through the same ordered emitter as image batches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..engine.types import Answerer, DoneEvent, Event, FailedEvent, GenerationSettings, PhaseEvent, Request, Result
from ..errors import KvlError
from ..media import video_sandbox
from ..media.images import image_from_array
from ..media.video import Frame, Scene, VideoInfo, stamp, subtitle_time
from ..render import Renderer
from ..safetext import escape_controls, json_safe, one_line
from ..schema import AnswerGate
from ..tasks import SCENE_PROMPT
from .ordered import OrderedEmitter, Outcome, run_ordered
from .plan import PROMPT_RESERVE


@dataclass(frozen=True)
class VideoArgs:
    """How frames are taken: the whole range (a summary) or per scene."""

    fps: float | None = None
    max_frames: int = 16
    start: float | None = None
    end: float | None = None
    frames_per_scene: int = 3
    threshold: float | None = None  # None: the detector's own default
    detector: str = "adaptive"
    per_frame: int = 256  # image tokens per frame before fitting the context


def frame_budget(n_frames: int, per_frame: int, ctx: int, max_tokens: int) -> int:
    """Tokens per frame so that frames × tokens + the answer fit the context."""
    room = ctx - max_tokens - PROMPT_RESERVE
    if room < n_frames * 8:
        room = ctx - PROMPT_RESERVE - 256
    return max(8, min(per_frame, room // max(1, n_frames)))


def frames_request(marker: str, frames: list[Frame], label: str, instruction: str, per_frame: int,
                   settings: GenerationSettings) -> Request:
    """Frame after frame, each its timestamp then its image, and the instruction right after the last."""
    images = [image_from_array(f.rgb, label=f"{label}@{f.time:.2f}", max_tokens=per_frame) for f in frames]
    text = "".join(f"{stamp(f.time)}{marker}" for f in frames) + instruction
    return Request(user_text=text, images=images, settings=settings)


def run_request(engine: Answerer, request: Request, renderer: Renderer,
                gate: AnswerGate | None = None) -> tuple[Result, dict[str, Any]]:
    """One request streamed to ``renderer``: its result and, with --schema, the ``data`` field
    (a constrained answer is shown only once it validates; a KvlError says why it did not)."""
    gate = gate or AnswerGate(None)
    result = None
    for _, ev in engine.generate_many([request], 1):
        if isinstance(ev, FailedEvent):
            raise ev.error
        if gate.passes(ev):
            renderer.event(ev)
        if isinstance(ev, DoneEvent):
            result = ev.result
    assert result is not None
    return gate.release(result, renderer.event)


class SceneWriter:
    """Scene captions as text, JSON Lines, SRT or WebVTT, written as each scene finishes."""

    def __init__(self, fmt: str, out: IO[str], multiple: bool) -> None:
        self.fmt, self.out, self.multiple, self.n = fmt, out, multiple, 0
        # the model's text: byte-exact in a pipe, its control characters escaped on a terminal
        self.shown = escape_controls if _isatty(out) else str
        if fmt == "vtt":
            out.write("WEBVTT\n\n")

    def write(self, file: str, scene: Scene, caption: str, thinking: str, extra: dict[str, Any] | None = None) -> None:
        self.n += 1
        text = self.shown(" ".join(caption.split()))
        if self.fmt == "jsonl":
            rec = {"file": file, "scene": scene.index, "start": round(scene.start, 3), "end": round(scene.end, 3),
                   "caption": caption, "thinking": thinking or None, **(extra or {})}
            self.out.write(json_safe(json.dumps(rec, ensure_ascii=False)) + "\n")
        elif self.fmt == "srt":
            self.out.write(f"{self.n}\n{subtitle_time(scene.start)} --> {subtitle_time(scene.end)}\n{text}\n\n")
        elif self.fmt == "vtt":
            self.out.write(f"{subtitle_time(scene.start, '.')} --> {subtitle_time(scene.end, '.')}\n{text}\n\n")
        else:
            prefix = f"{one_line(file)} " if self.multiple else ""
            self.out.write(f"{prefix}[{subtitle_time(scene.start, '.')} → {subtitle_time(scene.end, '.')}] {text}\n")
        self.out.flush()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class ScenesInOrder:
    """What a sink of scene captions (``ordered``'s Sink) does the same everywhere: the phases go to
    ``progress``, and a finished answer is checked against ``--schema`` (``checked``)."""

    gate: AnswerGate

    def begin(self, pos: int) -> None:
        pass

    def event(self, pos: int, ev: Event) -> None:
        if isinstance(ev, PhaseEvent):
            self.progress(pos, ev)

    def progress(self, pos: int, ev: PhaseEvent) -> None:
        raise NotImplementedError

    def checked(self, outcome: Outcome) -> tuple[Outcome, dict[str, Any]]:
        """The outcome, a failure if the answer does not validate; with the schema's extra fields."""
        extra: dict[str, Any] = {}
        if isinstance(outcome, Result) and not outcome.interrupted:
            try:
                outcome, _, extra = self.gate.check(outcome)
            except KvlError as exc:
                outcome = exc
        return outcome, extra


class SceneSink(ScenesInOrder):
    """Writes one video's scene captions in scene order (see ``ordered``); keeps the first failure."""

    def __init__(self, label: str, scenes: list[Scene], writer: SceneWriter, renderer: Renderer,
                 detect_s: float, gate: AnswerGate | None = None) -> None:
        self.label, self.scenes, self.writer, self.renderer = label, scenes, writer, renderer
        self.gate = gate or AnswerGate(None)
        self.detect_s = detect_s
        self.started: dict[int, tuple[int, float]] = {}  # scene position -> frames, start time
        self.error: KvlError | None = None

    def progress(self, pos: int, ev: PhaseEvent) -> None:
        self.renderer.status("captioning scene", f"{self.scenes[pos].index}/{len(self.scenes)}")

    def done(self, pos: int, outcome: Outcome) -> None:
        self.renderer.stop_status()
        outcome, extra = self.checked(outcome)
        if isinstance(outcome, KvlError):
            self.error = self.error or outcome
            return
        scene = self.scenes[pos]
        self.writer.write(self.label, scene, outcome.answer, outcome.thinking, extra)
        if self.renderer.opts.verbose:
            n_frames, t1 = self.started.get(pos, (0, time.perf_counter()))
            self.renderer.err.print(f"[dim]scene {scene.index}/{len(self.scenes)}: {n_frames} frames, "
                                    f"{time.perf_counter() - t1:.1f} s (scene detection {self.detect_s:.1f} s)[/]")


def caption_scenes(engine: Answerer, path: Path, label: str, info: VideoInfo, args: VideoArgs,
                   settings: GenerationSettings, renderer: Renderer, writer: SceneWriter, ctx: int,
                   parallel: int = 1, gate: AnswerGate | None = None) -> int:
    """Caption each scene, several at once with ``parallel`` > 1, written in scene order. Returns
    the number of scenes; raises the first scene's failure after the others are written."""
    renderer.status("finding scenes")
    t0 = time.perf_counter()
    scenes = video_sandbox.scenes(path, info, detector=args.detector, threshold=args.threshold, start=args.start,
                                  end=args.end)
    sink = SceneSink(label, scenes, writer, renderer, time.perf_counter() - t0, gate)
    emitter = OrderedEmitter(sink)
    per_frame = frame_budget(args.frames_per_scene, args.per_frame, ctx, settings.max_tokens)

    def requests() -> Iterator[tuple[int, Request]]:
        # frames are decoded here, on the calling thread, while the workers encode and generate
        for pos, scene in enumerate(scenes):
            t1 = time.perf_counter()
            sampler = video_sandbox.sample(path, info, max_frames=args.frames_per_scene, start=scene.start,
                                           end=max(scene.end, scene.start + 1e-3))
            frames = sampler.frames
            if sampler.warning:
                renderer.warn(sampler.warning)
            if not frames:
                emitter.settle(pos, None)
                continue
            sink.started[pos] = (len(frames), t1)
            yield pos, frames_request(engine.marker, frames, label, SCENE_PROMPT, per_frame, settings)

    run_ordered(engine, requests(), emitter, parallel)
    if sink.error is not None:
        raise sink.error
    return len(scenes)
