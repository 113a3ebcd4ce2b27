"""What caption, ocr and ask share: inputs, model, settings, renderer, run, exit code."""

from __future__ import annotations

from typing import Any

import click

from ..batch import read_list, select
from ..environment import Environment
from ..errors import InputError
from ..media.images import InputProblem, InputRef, expand_inputs
from ..options import BatchOptions, CommonOptions
from ..render import Renderer, make_renderer
from ..runner import Job, exit_code, load_engine, precheck_jobs, run_jobs

pass_env = click.make_pass_decorator(Environment, ensure=True)


def current_env() -> Environment:
    """The Environment of the running command (a fresh one outside Click)."""
    ctx = click.get_current_context(silent=True)
    return ctx.ensure_object(Environment) if ctx is not None else Environment()


def renderer_for(common: CommonOptions, env: Environment) -> Renderer:
    return make_renderer(common.out.render_options(common.gen), env)


def run_image_task(task: str, jobs: list[Job], problems: list[InputProblem], common: CommonOptions,
                   meta: dict[str, Any], parallel: int | None = 1, env: Environment | None = None) -> int:
    """Run jobs for an image command and return its exit code."""
    m = common.model
    settings = common.gen.settings(task)
    env = env or current_env()
    renderer = renderer_for(common, env)
    if not jobs and not problems:
        raise InputError("no input given", hint=f"try: kvl {task} photo.jpg")
    if not jobs:  # resolve the model only when something can run: a missing file should not ask for a model
        _, failed = precheck_jobs([], problems, renderer)
        renderer.close()
        return int(exit_code(failed))
    from .pull import ensure_model

    model, mmproj, model_name = ensure_model(m.model, m.mmproj, renderer, yes=m.yes)
    meta = {"task": task, "model": model_name, **meta, "image_max_tokens": m.image_tokens(task),
            "temperature": settings.temperature, "seed": settings.seed}
    parallel = max(1, min(parallel or m.default_parallel(), len(jobs)))
    lanes, per_lane = m.plan_parallel(parallel)
    config = m.engine_config(task, model, mmproj, verbose=common.out.verbose, parallel=per_lane, lanes=lanes)
    if parallel > 1:
        # each sequence gets its own cells: as many as one input can use (its images, the longest
        # answer, room for the prompt's text), not --ctx times N
        need = (config.image_max_tokens or 1024) * max(len(j.refs) for j in jobs) + settings.max_tokens + 512
        config.n_ctx = min(config.n_ctx, -(-need // 256) * 256)
    if common.out.dry_run:
        from ..preview import preview_jobs

        return int(exit_code(preview_jobs(jobs, problems, config, settings, meta, renderer, env,
                                          as_json=common.out.as_json)))
    remote = None
    if m.server:  # a running `kvl serve` of the same model answers: nothing loads here
        from ..serve.client import remote_engine

        remote = remote_engine(config, meta)
    try:
        outcomes = run_jobs(remote or (lambda first: load_engine(config, renderer, cache=m.cache, encode_ahead=first)),
                            jobs,
                            problems, settings=settings, renderer=renderer, image_max_tokens=config.image_max_tokens,
                            meta=meta, parallel=parallel)
    finally:
        renderer.close()
    return int(exit_code(outcomes))


def per_image_jobs(refs: list[InputRef], instruction: str) -> list[Job]:
    return [Job(label=ref.label, refs=[ref], instruction=instruction) for ref in refs]


def batch_inputs(inputs: tuple[str, ...], b: BatchOptions,
                 env: Environment) -> tuple[list[InputRef], list[InputProblem]]:
    """Arguments plus --from, then --skip-done and --shard; says on stderr what it skipped."""
    args = list(inputs)
    stdin: bytes | None = None
    if b.from_file:
        args += read_list(b.from_file, env)
    elif not args and not env.stdin_isatty:
        # `find … | kvl caption`: paths on stdin; `kvl caption < photo.jpg`: the image itself
        stdin = env.read_stdin()
        if _is_text(stdin):
            args = [line.strip() for line in stdin.decode("utf-8").splitlines()
                    if line.strip() and not line.strip().startswith("#")]
        elif stdin:
            args = ["-"]
    refs, problems = expand_inputs(args, stdin=stdin if stdin is not None else _lazy_stdin(args, env))
    if b.skip_done or b.shard:
        refs, n_done, n_other = select(refs, skip_done=b.skip_done, shard=b.shard)
        notes = []
        if n_done:
            notes.append(f"{n_done} already done in {b.skip_done}")
        if b.shard and n_other:
            notes.append(f"{n_other} left to the other shards (this is {b.shard[0]}/{b.shard[1]})")
        if notes:
            env.stderr.write(f"kvl: skipping {', '.join(notes)}; {len(refs)} to run\n")
    return refs, problems


def _lazy_stdin(args: list[str], env: Environment) -> bytes | None:
    """stdin's bytes when an argument is ``-`` (read once, whoever asks)."""
    return env.read_stdin() if "-" in args else None


def _is_text(data: bytes) -> bool:
    head = data[:4096]
    if not head or b"\x00" in head:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
