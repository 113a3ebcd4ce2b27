"""``kvl video`` and ``kvl ask VIDEO`` on this machine: every video probed before the model loads,
the model loaded once, then each video summarised (or captioned scene by scene) in input order.

1) probe each video in the decoder process (a failure keeps its place), 2) find the model pair and
size the engine from the run plan, 3) ``--dry-run``: each prompt, nothing generated; else 4) load
once and run each video, a failed one reported in its place.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO

from ..engine.dryrun import PromptPreview
from ..engine.mtmd_handles import default_marker
from ..engine.types import Answerer, EngineConfig, Request
from ..environment import Environment
from ..errors import ExitCode, InputError, Interrupted, KvlError, OutputClosed, OutputError, batch_exit_code
from ..limits import is_regular
from ..media import video_sandbox
from ..media.images import InputProblem, InputRef, expand_inputs
from ..media.video import Frame, Scene, VideoInfo
from ..render import Renderer
from ..store.catalog import Pair
from ..tasks import SCENE_PROMPT
from .plan import RunPlan
from .preview import PreviewWriter
from .videos import SceneWriter, VideoArgs, caption_scenes, frame_budget, frames_request, run_request

Probed = tuple[InputRef, VideoInfo] | InputProblem  # a video ready to run, or one that failed


def probe_all(inputs: list[str]) -> list[Probed]:
    """Every video probed (in the decoder process) before the model loads, in input order; the
    ones that failed keep their place (reported when their turn comes, as in a batch)."""
    refs, problems = expand_inputs(inputs, video=True)
    slots: list[Probed] = [p for p in problems if p.at is None]
    for pos, ref in enumerate([*refs, None]):
        slots += [p for p in problems if p.at == pos]
        if ref is None:
            break
        try:
            if ref.path is None or not is_regular(ref.path):  # probed, then read again: a pipe cannot be
                raise InputError(f"{ref.label}: a video must be a regular file, not a stream",
                                 hint="save the stream to a file first")
            slots.append((ref, video_sandbox.probe(ref.path)))
        except InputError as exc:
            slots.append(InputProblem(ref.label, exc))
    return slots


class VideoRun:
    """One ``kvl video`` (or ``kvl ask VIDEO``) call: the model loaded once for every video. Scene
    captions go to ``out`` (stdout) in ``fmt`` (``scenes``); a summary, and every failure, through ``renderer``."""

    def __init__(self, plan: RunPlan, args: VideoArgs, renderer: Renderer, env: Environment, *, instruction: str,
                 scenes: bool = False, fmt: str = "text", task_meta: dict[str, object] | None = None,
                 out: IO[str] | None = None) -> None:
        self.plan, self.renderer, self.env, self.scenes, self.fmt = plan, renderer, env, scenes, fmt
        self.out = out or env.stdout
        self.args = VideoArgs(**{**args.__dict__, "per_frame": plan.image_tokens})
        self.instruction = instruction
        self.task_meta = task_meta or {"task": "video"}
        self.gate = plan.gate()
        self.model_name = ""
        self.config: EngineConfig | None = None

    def run(self, inputs: list[str], find_pair: Callable[[], Pair], load: Callable[[EngineConfig], Answerer],
            dry_run: bool = False) -> int:
        """Probe, find the pair, then show each prompt (``dry_run``) or load and run each video."""
        slots, failures = probe_all(inputs), list[KvlError]()
        checked = [slot for slot in slots if not isinstance(slot, InputProblem)]
        while slots and self._failed(slots[0], failures):  # failures before the first good video: at once
            slots.pop(0)
        if not checked:
            self.renderer.close()
            return batch_exit_code([int(f.exit_code) for f in failures], 0)
        model, mmproj, self.model_name = find_pair()
        self.config = self.plan.engine_config(model, mmproj)
        if dry_run:
            self._preview(slots, failures)
            return int(ExitCode.PARTIAL if failures else 0)
        engine = load(self.config)  # the caller's: it frees it
        try:
            done = self._each(engine, slots, checked, failures)
        finally:
            self.renderer.close()
        return batch_exit_code([int(f.exit_code) for f in failures], done)

    def _failed(self, slot: Probed, failures: list[KvlError]) -> bool:
        """Report ``slot`` if it is a failure (whether it was)."""
        if not isinstance(slot, InputProblem):
            return False
        self.renderer.error(slot.label, slot.error)
        failures.append(slot.error)
        return True

    def _each(self, engine: Answerer, slots: list[Probed], checked: list[tuple[InputRef, VideoInfo]],
              failures: list[KvlError]) -> int:
        """Every video in input order (a failed one reported in its place); how many succeeded."""
        writer = SceneWriter(self.fmt, self.out, multiple=len(checked) > 1) if self.scenes else None
        done = 0
        for slot in slots:
            if self._failed(slot, failures):
                continue
            assert not isinstance(slot, InputProblem)
            ref, info = slot
            try:
                self._one(engine, ref, info, checked.index(slot) + 1, len(checked), writer)
                done += 1
            except (OutputError, OutputClosed):
                raise  # stdout failed: nothing more can be written, for this video or the next
            except KvlError as exc:
                if exc.exit_code is ExitCode.INTERRUPTED:
                    raise
                self.renderer.error(ref.label, exc)
                failures.append(exc)
        return done

    def _preview(self, slots: list[Probed], failures: list[KvlError]) -> None:
        """``--dry-run``: each video's prompt (each scene's, with --scenes), nothing generated; a
        video that failed its check reported in its place."""
        assert self.config is not None
        items = [(slot, scene) for slot in slots for scene in
                 ([None] if isinstance(slot, InputProblem) or not self.scenes else self._scenes(*slot))]
        writer = PreviewWriter(self.env, self.config, self.plan.settings, as_json=self.plan.render.json,
                               total=sum(not isinstance(slot, InputProblem) for slot, _ in items))
        with PromptPreview(self.config) as pp:
            for slot, scene in items:
                if self._failed(slot, failures):
                    continue
                assert not isinstance(slot, InputProblem)
                label, request, frames = self._request(*slot, scene, default_marker())
                writer.write(label, pp.view(request), {**self.task_meta, "frames": [round(f.time, 3) for f in frames]})

    def _request(self, ref: InputRef, info: VideoInfo, scene: Scene | None,
                 marker: str) -> tuple[str, Request, list[Frame]]:
        assert ref.path is not None and self.config is not None
        a, settings = self.args, self.plan.settings
        if scene is None:
            sampled = video_sandbox.sample(ref.path, info, fps=a.fps, max_frames=a.max_frames, start=a.start, end=a.end)
        else:
            sampled = video_sandbox.sample(ref.path, info, max_frames=a.frames_per_scene, start=scene.start,
                                           end=max(scene.end, scene.start + 1e-3))
        frames = sampled.frames
        per = a.frames_per_scene if scene is not None else len(frames)
        request = frames_request(marker, frames, ref.label, SCENE_PROMPT if scene is not None else self.instruction,
                                 frame_budget(per, a.per_frame, self.config.n_ctx, settings.max_tokens), settings)
        return (ref.label if scene is None else f"{ref.label} scene {scene.index}"), request, frames

    def _scenes(self, ref: InputRef, info: VideoInfo) -> list[Scene]:
        assert ref.path is not None
        a = self.args
        return video_sandbox.scenes(ref.path, info, detector=a.detector, threshold=a.threshold, start=a.start,
                                    end=a.end)

    def _one(self, engine: Answerer, ref: InputRef, info: VideoInfo, index: int, total: int,
             writer: SceneWriter | None) -> None:
        assert ref.path is not None and self.config is not None
        settings = self.plan.settings
        if writer is not None:
            caption_scenes(engine, ref.path, ref.label, info, self.args, settings, self.renderer, writer,
                           self.config.n_ctx, self.plan.parallel or 1, self.gate)
            return
        self.renderer.begin(ref.label, index, total)
        self.renderer.status("decoding video")
        t0 = time.perf_counter()
        a = self.args
        sampler = video_sandbox.sample(ref.path, info, fps=a.fps, max_frames=a.max_frames, start=a.start, end=a.end)
        frames = sampler.frames
        decode_s = time.perf_counter() - t0
        if sampler.warning:
            self.renderer.warn(sampler.warning)
        per_frame = frame_budget(len(frames), a.per_frame, self.config.n_ctx, settings.max_tokens)
        request = frames_request(engine.marker, frames, ref.label, self.instruction, per_frame, settings)
        result, extra = run_request(engine, request, self.renderer, self.gate)
        meta = {**self.task_meta, **extra, "model": self.model_name, "frames": [round(f.time, 3) for f in frames],
                "tokens_per_frame": per_frame, "decode_s": round(decode_s, 3), "decoded_frames": sampler.decoded}
        self.renderer.end(ref.label, result, meta)
        if result.interrupted:
            raise Interrupted()
