from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import click

from ..distributed.options import ray_from, ray_video_options
from ..engine.types import Request
from ..environment import Environment
from ..errors import ExitCode, InputError, Interrupted, KvlError, OutputClosed, OutputError, UsageError
from ..limits import is_regular
from ..media import video_sandbox
from ..media.images import InputProblem, InputRef, expand_inputs
from ..media.scenes import DEFAULT_DETECTOR, DETECTORS, check_detector
from ..media.video import Scene, VideoInfo, parse_time
from ..options import CommonOptions, common_options, generation_options, model_options, output_options
from ..render import OutputOptions, Renderer, make_renderer
from ..runner import load_engine
from ..safetext import json_safe
from ..schema import AnswerGate
from ..tasks import SCENE_PROMPT, VIDEO_PROMPT
from ..videos import PROMPT_RESERVE, SceneWriter, VideoArgs, caption_scenes, frame_budget, frames_request, run_request
from ._common import check_image_tokens, pass_env
from .pull import ensure_model

SCENE_THINK_BUDGET = 256  # a scene caption needs little deliberation


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


def run_exit_code(done: int, failures: list[KvlError]) -> int:
    """0, 5 when some videos failed, else the first failure's own code (8 for a prompt too long)."""
    if not failures:
        return 0
    return int(ExitCode.PARTIAL) if done else int(failures[0].exit_code)


class VideoRun:
    """One ``kvl video`` (or ``kvl ask VIDEO``) call: the model loaded once for every video."""

    def __init__(self, common: CommonOptions, args: VideoArgs, env: Environment, *, instruction: str,
                 scenes: bool = False, fmt: str = "text", parallel: int | None = None,
                 task_meta: dict[str, Any] | None = None) -> None:
        self.common, self.args, self.env, self.scenes, self.fmt = common, args, env, scenes, fmt
        self.instruction = instruction
        self.task_meta = task_meta or {"task": "video"}
        self.answer = common.gen.answer_schema()
        self.gate = AnswerGate(self.answer)
        self.settings = common.gen.settings("video", self.answer)
        if scenes and common.gen.think_budget is None and not common.gen.no_think:
            self.settings = replace(self.settings, think_budget=SCENE_THINK_BUDGET)
        opts = common.out.render_options(common.gen)
        self.renderer = make_renderer(opts, env) if not scenes else Renderer(OutputOptions(verbose=opts.verbose), env)
        m = common.model
        self.parallel = (parallel or m.default_parallel()) if scenes else 1
        self.args = replace(args, per_frame=m.image_tokens("video"))

    def _failed(self, slot: Probed, failures: list[KvlError]) -> bool:
        """Report ``slot`` if it is a failure (whether it was)."""
        if not isinstance(slot, InputProblem):
            return False
        self.renderer.error(slot.label, slot.error)
        failures.append(slot.error)
        if self.scenes and self.common.out.dry_run and self.common.out.as_json:  # in its place, as without --scenes
            self.env.stdout.write(json_safe(json.dumps({"input": slot.label, "error": str(slot.error),
                                                        "exit_code": int(slot.error.exit_code)},
                                                       ensure_ascii=False)) + "\n")
            self.env.stdout.flush()
        return True

    def run(self, inputs: list[str]) -> int:
        check_image_tokens(self.common.model, "video")
        slots, failures = probe_all(inputs), list[KvlError]()
        checked = [slot for slot in slots if not isinstance(slot, InputProblem)]
        while slots and self._failed(slots[0], failures):  # failures before the first good video: at once
            slots.pop(0)
        if not checked:
            self.renderer.close()
            return run_exit_code(0, failures)
        m = self.common.model
        model, mmproj, self.model_name = ensure_model(m.model, m.mmproj, self.renderer, yes=m.yes)
        lanes, per_lane = m.plan_parallel(self.parallel)
        self.config = m.engine_config("video", model, mmproj, verbose=self.common.out.verbose, parallel=per_lane,
                                      lanes=lanes, image_max_tokens=self.args.per_frame)
        if self.parallel > 1:
            # each scene's sequence gets the cells one scene can use, not --ctx each
            need = self.args.frames_per_scene * (self.args.per_frame + 16) + self.settings.max_tokens + PROMPT_RESERVE
            self.config.n_ctx = min(self.config.n_ctx, -(-need // 256) * 256)
        if self.common.out.dry_run:
            self._preview(slots, failures)
            return int(ExitCode.PARTIAL if failures else 0)
        engine = load_engine(self.config, self.renderer, cache=m.cache)
        try:
            done = self._each(engine, slots, checked, failures)
        finally:
            self.renderer.close()
        # not on Ctrl-C or an error: freeing the model takes a second or two, and kvl should say why it
        # stopped at once (the process's exit frees it)
        engine.close()
        return run_exit_code(done, failures)

    def _each(self, engine: Any, slots: list[Probed], checked: list[tuple[InputRef, VideoInfo]],
              failures: list[KvlError]) -> int:
        """Every video in input order (a failed one reported in its place); how many succeeded."""
        writer = SceneWriter(self.fmt, self.env.stdout, multiple=len(checked) > 1) if self.scenes else None
        done = 0
        for slot in slots:
            if isinstance(slot, InputProblem):
                self._failed(slot, failures)
                continue
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
        from ..engine.dryrun import PromptPreview
        from ..preview import PreviewWriter

        items = [(slot, scene) for slot in slots for scene in
                 ([None] if isinstance(slot, InputProblem) or not self.scenes else self._scenes(*slot))]
        writer = PreviewWriter(self.env, self.config, self.settings, as_json=self.common.out.as_json,
                               total=sum(not isinstance(slot, InputProblem) for slot, _ in items))
        with PromptPreview(self.config) as pp:
            for slot, scene in items:
                if isinstance(slot, InputProblem):
                    self._failed(slot, failures)
                    continue
                label, request, frames = self._preview_request(*slot, scene)
                writer.write(label, pp.view(request), {**self.task_meta, "frames": [round(f.time, 3) for f in frames]})

    def _preview_request(self, ref: InputRef, info: VideoInfo, scene: Scene | None) -> tuple[str, Request, list[Any]]:
        from ..engine.media_handles import default_marker

        assert ref.path is not None
        a = self.args
        if scene is None:
            sampled = video_sandbox.sample(ref.path, info, fps=a.fps, max_frames=a.max_frames, start=a.start, end=a.end)
        else:
            sampled = video_sandbox.sample(ref.path, info, max_frames=a.frames_per_scene, start=scene.start,
                                           end=max(scene.end, scene.start + 1e-3))
        frames = sampled.frames
        per = a.frames_per_scene if scene is not None else len(frames)
        request = frames_request(default_marker(), frames, ref.label,
                                 SCENE_PROMPT if scene is not None else self.instruction,
                                 frame_budget(per, a.per_frame, self.config.n_ctx, self.settings.max_tokens),
                                 self.settings)
        return (ref.label if scene is None else f"{ref.label} scene {scene.index}"), request, frames

    def _scenes(self, ref: InputRef, info: VideoInfo) -> list[Scene]:
        assert ref.path is not None
        a = self.args
        return video_sandbox.scenes(ref.path, info, detector=a.detector, threshold=a.threshold, start=a.start,
                                    end=a.end)

    def _one(self, engine: Any, ref: InputRef, info: VideoInfo, index: int, total: int,
             writer: SceneWriter | None) -> None:
        assert ref.path is not None
        if writer is not None:
            caption_scenes(engine, ref.path, ref.label, info, self.args, self.settings, self.renderer, writer,
                           self.config.n_ctx, self.parallel, self.gate)
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
        per_frame = frame_budget(len(frames), a.per_frame, self.config.n_ctx, self.settings.max_tokens)
        request = frames_request(engine.marker, frames, ref.label, self.instruction, per_frame, self.settings)
        result, extra = run_request(engine, request, self.renderer, self.gate)
        meta = {**self.task_meta, **extra, "model": self.model_name, "frames": [round(f.time, 3) for f in frames],
                "tokens_per_frame": per_frame, "decode_s": round(decode_s, 3), "decoded_frames": sampler.decoded}
        self.renderer.end(ref.label, result, meta)
        if result.interrupted:
            raise Interrupted()


def video_options(f: Any) -> Any:
    for d in reversed([
        click.option("--fps", type=click.FloatRange(0.001, 120), default=None,
                     help="Frames per second to sample [default: --max-frames spread evenly]."),
        click.option("--max-frames", type=click.IntRange(1, 512), default=16, show_default=True,
                     help="Most frames given to the model."),
        click.option("--start", default=None, metavar="TIME", help="Start of the range (65, 1:05, 00:01:05.5)."),
        click.option("--end", default=None, metavar="TIME", help="End of the range."),
    ]):
        f = d(f)
    return f


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, metavar="VIDEO...")
@click.option("--scenes", is_flag=True, help="Caption scene by scene (cuts found with PySceneDetect).")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl", "srt", "vtt"]), default="text",
              show_default=True, help="With --scenes: output format (srt/vtt load in video players).")
@click.option("--frames-per-scene", type=click.IntRange(1, 64), default=3, show_default=True,
              help="With --scenes: frames sampled inside each scene.")
@click.option("--detector", type=click.Choice(DETECTORS), default=DEFAULT_DETECTOR, show_default=True,
              help="With --scenes: PySceneDetect's detector for hard cuts (adaptive scores best on its benchmark; "
              "fades and dissolves are found by kvl's own pass whatever the detector).")
@click.option("--threshold", type=float, default=None,
              help="With --scenes: the detector's cut threshold in its own units (higher finds fewer cuts) "
              "[default: the detector's own: adaptive 3, content 27, histogram 0.2, hash 0.35].")
@click.option("--parallel", "-P", type=click.IntRange(1, 64), default=None,
              help="With --scenes: scenes worked on at once, written in order [default: as for caption, "
              "2 on a CPU with 2+ cores, 4 with a GPU].")
@click.option("--prompt", default=None, help="Instruction instead of the default summary request.")
@video_options
@ray_video_options
@model_options
@generation_options
@output_options
@pass_env
def video(env: Environment, inputs: tuple[str, ...], scenes: bool, fmt: str, frames_per_scene: int,
          detector: str, threshold: float | None, parallel: int | None, prompt: str | None, fps: float | None,
          max_frames: int, start: str | None, end: str | None, **kwargs: Any) -> int:
    """Summarise videos, or caption them scene by scene.

    The model sees sampled frames in order with their timestamps between them ([00:01:05]), so
    answers can cite times. Frames get 256 image tokens each by default (--image-max-tokens),
    fewer when frames × tokens would not fit --ctx. Videos are read as a stream: memory stays
    bounded whatever their length. An animated GIF counts as a video.

    \b
      kvl video clip.mp4
      kvl video --scenes --format srt movie.mp4 > movie.srt
      kvl video --scenes --format jsonl videos/ > scenes.jsonl
      kvl video --start 1:00 --end 2:30 --fps 0.5 talk.webm
    """
    common = common_options(kwargs)
    ray = ray_from(kwargs, video=True)
    if common.out.as_json and scenes:
        fmt = "jsonl"
    check_detector(detector, threshold)
    args = VideoArgs(fps=fps, max_frames=max_frames, start=parse_time(start), end=parse_time(end),
                     frames_per_scene=frames_per_scene, detector=detector, threshold=threshold)
    if args.start is not None and args.end is not None and args.end <= args.start:
        raise UsageError(f"--end {end} is not after --start {start}", hint="give an --end later than --start")
    if ray is not None:
        from ..distributed import run_on_ray

        return run_on_ray("video", inputs, ray, common, env, video=args, scenes=scenes, fmt=fmt, parallel=parallel)
    run = VideoRun(common, args, env, instruction=prompt or VIDEO_PROMPT, scenes=scenes, fmt=fmt, parallel=parallel)
    return run.run(list(inputs))


def ask_video(path: str, question: str, common: CommonOptions, env: Environment) -> int:
    """``kvl ask clip.mp4 "question"``: 16 frames spread over the video, with timestamps."""
    instruction = f"These are frames from a video, in order, each preceded by its timestamp. {question}"
    run = VideoRun(common, VideoArgs(), env, instruction=instruction, task_meta={"task": "ask", "question": question})
    return run.run([path])
