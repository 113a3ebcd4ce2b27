"""The driver's plan for a run: the settings every worker gets, the inputs still to run, the size
of the pool. Everything a user can get wrong is refused here, before a cluster is touched."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import IO, Any

from ..environment import Environment
from ..errors import InputError, UsageError
from ..media.documents import DocumentOptions
from ..options import BatchOptions, CommonOptions
from ..run.batch import input_names
from ..run.locate import plan_for_locate
from ..run.plan import make_plan
from ..run.videos import VideoArgs
from .inputs import Row, list_inputs, page_rows
from .options import RayOptions
from .parts import Store, drop_failed, scan
from .spec import WorkSpec


def refuse_unsupported(ray_opts: RayOptions, common: CommonOptions, batch: BatchOptions | None,
                       video: VideoArgs | None, scenes: bool, fmt: str) -> None:
    if common.out.dry_run:
        raise UsageError("--dry-run shows the prompt on this machine", hint="drop --ray")
    if batch is not None and batch.shard is not None:
        raise UsageError("--shard is for machines without a cluster", hint="drop --shard: Ray spreads the inputs")
    if batch is not None and batch.sidecars is not None:
        raise UsageError("--sidecar writes beside the inputs from this machine",
                         hint="drop --ray, or write --output DIR and search it: kvl index DIR")
    if video is not None and not scenes:
        raise UsageError("kvl video --ray captions scene by scene", hint="add --scenes")
    if fmt in ("srt", "vtt") and ray_opts.output is None:
        raise UsageError(f"--format {fmt} with --ray writes one file per video", hint="give --output DIR")


def make_spec(task: str, common: CommonOptions, ray_opts: RayOptions, *, meta: dict[str, Any], instruction: str,
              video: VideoArgs | None, parallel: int | None, gpu: bool,
              documents: DocumentOptions | None = None, point: bool = False) -> WorkSpec:
    frames = video.frames_per_scene if video is not None else 1
    plan = make_plan(task, common, parallel=parallel, images_per_input=frames, scenes=video is not None)
    if task == "locate":
        plan = plan_for_locate(plan, point)
    plan = plan.for_ray_worker(ray_opts.cpus or common.model.threads or 1, gpu)
    if video is not None:
        video = replace(video, per_frame=plan.image_tokens)
    return WorkSpec(task=task, plan=plan, meta=meta, instruction=instruction, output=ray_opts.output, video=video,
                    documents=documents or DocumentOptions(), point=point)


def gather_args(inputs: tuple[str, ...], batch: BatchOptions | None, env: Environment) -> list[str]:
    args = input_names(inputs, batch.from_file if batch is not None else None, env)
    if not args:
        raise InputError("no input given", hint="give files, directories, globs or URIs (or --from FILE)")
    return args


def still_to_run(rows: list[Row], skip_done: str | None, output: str | None, video: bool,
                 err: IO[str]) -> list[Row]:
    """``--skip-done DIR``: inputs (and scenes) with a successful record there are left out; failed
    ones run again, their old records taken out of DIR when it is also ``--output``."""
    if output is not None:
        store = Store(output)
        if store.names() and (skip_done is None or not _same(skip_done, output)):
            raise UsageError(f"--output {output} already holds results",
                             hint=f"resume with --skip-done {output}, or write into another folder")
    if skip_done is None:
        return rows
    done = scan(Store(skip_done))
    if video:
        todo = [{**r, "skip": sorted(done.scene_ok.get(r["key"], ()))} for r in rows if not done.video_done(r["key"])]
    else:
        todo = [r for r in rows if r["key"] not in done.ok]
    if output is not None and _same(skip_done, output):
        again = {r["key"] for r in todo}
        drop_failed(Store(output), done, {k for k in done.failed if k in again or k.rsplit("#", 1)[0] in again})
    if len(todo) < len(rows):
        err.write(f"kvl: skipping {len(rows) - len(todo)} already done in {skip_done}; {len(todo)} to run\n")
    return todo


def _same(a: str, b: str) -> bool:
    return Store(a).base.rstrip("/") == Store(b).base.rstrip("/")


def plan_rows(inputs: tuple[str, ...], batch: BatchOptions | None, ray_opts: RayOptions, env: Environment,
              video: bool, documents: DocumentOptions | None = None) -> list[Row]:
    rows = list_inputs(gather_args(inputs, batch, env), video=video)
    if not video:  # a document is one row per page, as a video is one per scene (every page once)
        rows = page_rows(rows, documents or DocumentOptions())
    skip = ray_opts.skip_done if video else (batch.skip_done if batch is not None else None)
    if skip is not None and not os.path.isdir(os.path.expanduser(skip)) and "://" not in skip \
            and os.path.exists(os.path.expanduser(skip)):
        raise UsageError(f"--skip-done {skip} is a file", hint="with --ray, give the --output DIR of the earlier run")
    return still_to_run(rows, skip, ray_opts.output, video, env.stderr)
