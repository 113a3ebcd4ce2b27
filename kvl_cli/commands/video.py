from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click

from ..engine.engine import DoneEvent, Engine, FailedEvent, PhaseEvent, Request, Result
from ..errors import ExitCode, InputError, KvlError
from ..media.images import expand_inputs, image_from_array
from ..media.video import FrameSampler, Scene, detect_scenes, parse_time, probe, stamp, subtitle_time
from ..options import (
    CommonArgs,
    default_parallel,
    engine_config,
    generation_options,
    generation_settings,
    model_options,
    output_options,
    output_settings,
    plan_parallel,
    split_kwargs,
)
from ..render import OutputOptions, Renderer, make_renderer
from ..runner import load_engine
from ..tasks import SCENE_PROMPT, VIDEO_PROMPT
from .pull import ensure_model

PROMPT_RESERVE = 512  # tokens kept for the instruction and timestamps besides the frames


def frame_budget(n_frames: int, per_frame: int, ctx: int, max_tokens: int) -> int:
    """Tokens per frame so that frames × tokens + the answer fit the context."""
    room = ctx - max_tokens - PROMPT_RESERVE
    if room < n_frames * 8:
        room = ctx - PROMPT_RESERVE - 256
    return max(8, min(per_frame, room // max(1, n_frames)))


def frames_request(engine: Engine, frames: list[Any], label: str, instruction: str, per_frame: int,
                   settings: Any) -> Request:
    images, parts = [], []
    for f in frames:
        images.append(image_from_array(f.rgb, label=f"{label}@{f.time:.2f}", max_tokens=per_frame))
        parts.append(f"{stamp(f.time)} {engine.marker}")
    return Request(user_text="\n".join(parts) + "\n" + instruction, images=images, settings=settings)


def run_request(engine: Engine, request: Request, renderer: Renderer) -> Result:
    result = None
    for ev in engine.generate(request):
        renderer.event(ev)
        if isinstance(ev, DoneEvent):
            result = ev.result
    assert result is not None
    return result


class SceneWriter:
    """Scene captions as text, JSON Lines, SRT or WebVTT, written as each scene finishes."""

    def __init__(self, fmt: str, out: IO[str], multiple: bool) -> None:
        self.fmt, self.out, self.multiple, self.n = fmt, out, multiple, 0
        if fmt == "vtt":
            out.write("WEBVTT\n\n")

    def write(self, file: str, scene: Scene, caption: str, thinking: str) -> None:
        self.n += 1
        text = " ".join(caption.split())
        if self.fmt == "jsonl":
            rec = {"file": file, "scene": scene.index, "start": round(scene.start, 3), "end": round(scene.end, 3),
                   "caption": caption, "thinking": thinking or None}
            self.out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        elif self.fmt == "srt":
            self.out.write(f"{self.n}\n{subtitle_time(scene.start)} --> {subtitle_time(scene.end)}\n{text}\n\n")
        elif self.fmt == "vtt":
            self.out.write(f"{subtitle_time(scene.start, '.')} --> {subtitle_time(scene.end, '.')}\n{text}\n\n")
        else:
            prefix = f"{file} " if self.multiple else ""
            self.out.write(f"{prefix}[{subtitle_time(scene.start, '.')} → {subtitle_time(scene.end, '.')}] {text}\n")
        self.out.flush()


def caption_scenes(engine: Engine, path: Path, label: str, info: Any, args: dict[str, Any], settings: Any,
                   renderer: Renderer, writer: SceneWriter, ctx: int, parallel: int = 1) -> int:
    """Caption each scene; with ``parallel`` > 1 several scenes are worked on at once (CPU workers
    or GPU sequences), and the captions are still written in scene order."""
    renderer.status("finding scenes")
    t0 = time.perf_counter()
    scenes = detect_scenes(path, threshold=args["threshold"], start=args["start"], end=args["end"], info=info)
    detect_s = time.perf_counter() - t0
    per_frame = frame_budget(args["frames_per_scene"], args["per_frame"], ctx, settings.max_tokens)
    order: list[tuple[Scene, int, float]] = []  # request index -> scene, frames, start time

    def requests() -> Iterator[Request]:
        # frames are decoded here, on the calling thread, while the workers encode and generate
        for scene in scenes:
            t1 = time.perf_counter()
            sampler = FrameSampler(path, max_frames=args["frames_per_scene"], start=scene.start,
                                   end=max(scene.end, scene.start + 1e-3), info=info)
            frames = list(sampler)
            if not frames:
                continue
            order.append((scene, len(frames), t1))
            yield frames_request(engine, frames, label, SCENE_PROMPT, per_frame, settings)

    ready: dict[int, Result] = {}
    shown = 0
    interrupted = False

    def write(index: int, result: Result) -> None:
        scene, n_frames, t1 = order[index]
        writer.write(label, scene, result.answer, result.thinking)
        if renderer.opts.verbose:
            renderer.err.print(f"[dim]scene {scene.index}/{len(scenes)}: {n_frames} frames, "
                               f"{time.perf_counter() - t1:.1f} s (scene detection {detect_s:.1f} s)[/]")

    try:
        for index, ev in engine.generate_many(requests(), parallel):
            if isinstance(ev, FailedEvent):
                raise ev.error
            if isinstance(ev, PhaseEvent) and ev.phase != "generate":
                renderer.status("captioning scene", f"{order[index][0].index}/{len(scenes)}")
            elif isinstance(ev, DoneEvent):
                renderer.stop_status()
                ready[index] = ev.result
                interrupted = interrupted or ev.result.finish_reason == "interrupted"
                while shown in ready:  # SRT and VTT need the scenes in order
                    write(shown, ready.pop(shown))
                    shown += 1
    finally:
        for index in sorted(ready):
            write(index, ready.pop(index))
    if interrupted:
        raise KeyboardInterrupt
    return len(scenes)


def run_video(inputs: list[str], instruction: str, common: CommonArgs, args: dict[str, Any], *,
              scenes: bool, fmt: str, task_meta: dict[str, Any]) -> int:
    m, g, o = common.model_opts, common.gen_opts, common.out_opts
    settings = generation_settings("video", g)
    if scenes and g["think_budget"] is None and not g["no_think"]:
        settings.think_budget = 256  # a scene caption needs little deliberation
    opts = output_settings(o, g)
    renderer = make_renderer(opts) if not scenes else Renderer(OutputOptions(verbose=opts.verbose))
    refs, problems = expand_inputs(inputs, video=True)
    failures = 0
    for p in problems:
        renderer.error(p.label, p.error)
        failures += 1
    checked = []
    for ref in refs:  # probe every video before the model loads
        try:
            if ref.path is None:
                raise InputError(f"{ref.label}: videos must be files", hint="save the stream to a file first")
            checked.append((ref, probe(ref.path)))
        except InputError as exc:
            renderer.error(ref.label, exc)
            failures += 1
    if not checked:
        renderer.close()
        return int(ExitCode.INPUT)
    model, mmproj, model_name = ensure_model(m["model"], m["mmproj"], renderer, yes=m["yes"])
    per_frame_default = int(m["image_max_tokens"] or 256)
    parallel = 1
    lanes, per_lane = 1, 1
    if scenes:
        parallel = args["parallel"] if args.get("parallel") else default_parallel(m)
        lanes, per_lane = plan_parallel(m, parallel)
    config = engine_config("video", {**m, "image_max_tokens": per_frame_default}, model, mmproj, o["verbose"],
                           parallel=per_lane, lanes=lanes)
    if parallel > 1:
        # each scene's sequence gets the cells one scene can use, not --ctx each
        need = args["frames_per_scene"] * (per_frame_default + 16) + settings.max_tokens + PROMPT_RESERVE
        config.n_ctx = min(config.n_ctx, -(-need // 256) * 256)
    engine = load_engine(config, renderer, cache=m["cache"])
    args = {**args, "per_frame": per_frame_default}
    writer = SceneWriter(fmt, sys.stdout, multiple=len(checked) > 1) if scenes else None
    done = 0
    try:
        for index, (ref, info) in enumerate(checked, 1):
            assert ref.path is not None
            try:
                if writer is not None:
                    caption_scenes(engine, ref.path, ref.label, info, args, settings, renderer, writer, config.n_ctx,
                                   parallel)
                else:
                    renderer.begin(ref.label, index, len(checked))
                    renderer.status("decoding video")
                    t0 = time.perf_counter()
                    sampler = FrameSampler(ref.path, fps=args["fps"], max_frames=args["max_frames"],
                                           start=args["start"], end=args["end"], info=info)
                    frames = list(sampler)
                    decode_s = time.perf_counter() - t0
                    per_frame = frame_budget(len(frames), per_frame_default, config.n_ctx, settings.max_tokens)
                    request = frames_request(engine, frames, ref.label, instruction, per_frame, settings)
                    result = run_request(engine, request, renderer)
                    meta = {**task_meta, "model": model_name, "frames": [round(f.time, 3) for f in frames],
                            "tokens_per_frame": per_frame, "decode_s": round(decode_s, 3),
                            "decoded_frames": sampler.decoded}
                    renderer.end(ref.label, result, meta)
                    if result.finish_reason == "interrupted":
                        raise KeyboardInterrupt
                done += 1
            except KvlError as exc:
                renderer.error(ref.label, exc)
                failures += 1
    except KeyboardInterrupt:
        renderer.close()
        click.echo("kvl: interrupted", err=True)
        return int(ExitCode.INTERRUPTED)
    finally:
        renderer.close()
        engine.close()
    if failures and done:
        return int(ExitCode.PARTIAL)
    return int(ExitCode.INPUT) if failures else 0


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
@click.option("--threshold", type=click.FloatRange(1, 255), default=27.0, show_default=True,
              help="With --scenes: content-change threshold for a cut (lower finds more cuts).")
@click.option("--parallel", "-P", type=click.IntRange(1, 64), default=None,
              help="With --scenes: scenes worked on at once, written in order [default: as for caption, "
              "2 on a CPU with 2+ cores, 4 with a GPU].")
@click.option("--prompt", default=None, help="Instruction instead of the default summary request.")
@video_options
@model_options
@generation_options
@output_options
def video(inputs: tuple[str, ...], scenes: bool, fmt: str, frames_per_scene: int, threshold: float,
          parallel: int | None, prompt: str | None, fps: float | None, max_frames: int, start: str | None,
          end: str | None, **kwargs: Any) -> int:
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
    common = split_kwargs(kwargs)
    if common.out_opts["as_json"] and scenes:
        fmt = "jsonl"
    args = {"fps": fps, "max_frames": max_frames, "start": parse_time(start), "end": parse_time(end),
            "frames_per_scene": frames_per_scene, "threshold": threshold, "parallel": parallel}
    return run_video(list(inputs), prompt or VIDEO_PROMPT, common, args, scenes=scenes, fmt=fmt,
                     task_meta={"task": "video"})


def ask_video(path: str, question: str, common: CommonArgs) -> int:
    """``kvl ask clip.mp4 "question"``: 16 frames spread over the video, with timestamps."""
    args = {"fps": None, "max_frames": 16, "start": None, "end": None, "frames_per_scene": 3, "threshold": 27.0}
    instruction = ("These are frames from a video, in order, each preceded by its timestamp. "
                   f"{question}")
    return run_video([path], instruction, common, args, scenes=False, fmt="text",
                     task_meta={"task": "ask", "question": question})
