"""What caption, ocr and ask share: inputs, model, settings, renderer, run, exit code."""

from __future__ import annotations

import sys
from typing import Any

from ..batch import read_list, select
from ..errors import ExitCode, InputError
from ..media.images import InputProblem, InputRef, expand_inputs
from ..options import (
    CommonArgs,
    default_parallel,
    engine_config,
    generation_settings,
    image_max_tokens,
    output_settings,
    plan_parallel,
)
from ..render import make_renderer
from ..runner import Interrupted, Job, exit_code, load_engine, run_jobs


def run_image_task(task: str, jobs: list[Job], problems: list[InputProblem], common: CommonArgs,
                   meta: dict[str, Any], parallel: int | None = 1) -> int:
    """Run jobs for an image command and return its exit code."""
    m, g, o = common.model_opts, common.gen_opts, common.out_opts
    settings = generation_settings(task, g)
    renderer = make_renderer(output_settings(o, g))
    if not jobs and not problems:
        raise InputError("no input given", hint=f"try: kvl {task} photo.jpg")
    model = None
    if jobs:  # resolve the model only when something can run: a missing file should not ask for a model
        from .pull import ensure_model

        model, mmproj, model_name = ensure_model(m["model"], m["mmproj"], renderer, yes=m["yes"])
        meta = {"task": task, "model": model_name, **meta,
                "image_max_tokens": image_max_tokens(task, m), "temperature": settings.temperature,
                "seed": settings.seed}
    else:
        meta = {"task": task, **meta}
    if parallel is None:
        parallel = default_parallel(m)
    parallel = max(1, min(parallel, len(jobs)))
    lanes, per_lane = plan_parallel(m, parallel)
    config = engine_config(task, m, model, mmproj if model else None, o["verbose"], parallel=per_lane, lanes=lanes)
    if parallel > 1:
        # each sequence gets its own cells: as many as one input can use (its images, the longest
        # answer, room for the prompt's text), not --ctx times N
        need = (config.image_max_tokens or 1024) * max(len(j.refs) for j in jobs) + settings.max_tokens + 512
        config.n_ctx = min(config.n_ctx, -(-need // 256) * 256)
    try:
        outcomes = run_jobs(lambda first: load_engine(config, renderer, cache=m["cache"], prefetch=first), jobs,
                            problems,
                            settings=settings, renderer=renderer, image_max_tokens=config.image_max_tokens,
                            meta=meta, parallel=parallel)
    except Interrupted:
        renderer.close()
        print("kvl: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    finally:
        renderer.close()
    return int(exit_code(outcomes))


def per_image_jobs(refs: list[InputRef], instruction: str) -> list[Job]:
    return [Job(label=ref.label, refs=[ref], instruction=instruction) for ref in refs]


def batch_inputs(inputs: tuple[str, ...], b: dict[str, Any]) -> tuple[list[InputRef], list[InputProblem]]:
    """Arguments plus --from, then --skip-done and --shard; says on stderr what it skipped."""
    args = list(inputs)
    stdin: bytes | None = None
    if b["from_file"]:
        args += read_list(b["from_file"])
    elif not args and not sys.stdin.isatty():
        # `find … | kvl caption`: paths on stdin; `kvl caption < photo.jpg`: the image itself
        try:
            stdin = sys.stdin.buffer.read()
        except (OSError, ValueError, AttributeError):
            stdin = b""
        if _is_text(stdin):
            args = [line.strip() for line in stdin.decode("utf-8").splitlines()
                    if line.strip() and not line.strip().startswith("#")]
        elif stdin:
            args = ["-"]
    refs, problems = expand_inputs(args, stdin=stdin)
    if b["skip_done"] or b["shard"]:
        refs, n_done, n_other = select(refs, skip_done=b["skip_done"], shard=b["shard"])
        notes = []
        if n_done:
            notes.append(f"{n_done} already done in {b['skip_done']}")
        if n_other:
            k, n = b["shard"]
            notes.append(f"{n_other} left to the other shards (this is {k}/{n})")
        if notes:
            print(f"kvl: skipping {', '.join(notes)}; {len(refs)} to run", file=sys.stderr)
    return refs, problems


BATCH_KEYS = ("from_file", "skip_done", "shard", "parallel")


def split_batch(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs.pop(k) for k in BATCH_KEYS}


def _is_text(data: bytes) -> bool:
    head = data[:4096]
    if not head or b"\x00" in head:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
