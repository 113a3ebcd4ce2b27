"""``kvl video``: flags, the run plan, the renderer; the work is ``run.video``'s."""

from __future__ import annotations

from typing import Any

import click

from ..environment import Environment
from ..errors import UsageError
from ..media.scenes import DEFAULT_DETECTOR, DETECTORS, check_detector
from ..media.video import parse_time
from ..options import CommonOptions
from ..render import JsonRenderer, OutputOptions, Renderer, make_renderer
from ..run.plan import RunPlan, make_plan
from ..run.videos import VideoArgs
from ..session import Session
from ..tasks import VIDEO_PROMPT, VIDEO_QUESTION
from ._common import pass_env
from .flags import (
    common_options,
    generation_options,
    model_options,
    output_options,
    ray_from,
    ray_video_options,
    stack_options,
)

video_options = stack_options(
    click.option("--fps", type=click.FloatRange(0.001, 120), default=None,
                 help="Frames per second to sample [default: --max-frames spread evenly]."),
    click.option("--max-frames", type=click.IntRange(1, 512), default=16, show_default=True,
                 help="Most frames given to the model."),
    click.option("--start", default=None, metavar="TIME", help="Start of the range (65, 1:05, 00:01:05.5)."),
    click.option("--end", default=None, metavar="TIME", help="End of the range."),
)


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
    plan = make_plan("video", common, parallel=parallel, images_per_input=frames_per_scene, scenes=scenes)
    session = Session(common.model, env=env)
    code = session.run_videos(plan, list(inputs), args, video_renderer(plan, env, scenes, common.out.dry_run),
                              instruction=prompt or VIDEO_PROMPT, scenes=scenes, fmt=fmt, dry_run=common.out.dry_run)
    # not on Ctrl-C or an error: freeing the model takes a second or two, and kvl should say why it
    # stopped at once (the process's exit frees it)
    session.close()
    return code


def video_renderer(plan: RunPlan, env: Environment, scenes: bool, dry_run: bool) -> Renderer:
    """A summary renders as any answer; scene captions are written by the scene writer, so their
    renderer shows progress and failures only (with --dry-run --json, a failure's record in its place,
    as without --scenes)."""
    if not scenes:
        return make_renderer(plan.render, env)
    opts = OutputOptions(verbose=plan.render.verbose)
    return JsonRenderer(opts, env) if dry_run and plan.render.json else Renderer(opts, env)


def ask_video(path: str, question: str, common: CommonOptions, env: Environment) -> int:
    """``kvl ask clip.mp4 "question"``: 16 frames spread over the video, with timestamps."""
    instruction = VIDEO_QUESTION + question
    plan = make_plan("video", common)
    session = Session(common.model, env=env)
    code = session.run_videos(plan, [path], VideoArgs(), make_renderer(plan.render, env), instruction=instruction,
                              task_meta={"task": "ask", "question": question}, dry_run=common.out.dry_run)
    session.close()  # as for kvl video
    return code
