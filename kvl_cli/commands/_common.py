"""What caption, ocr and ask share: inputs, model, settings, renderer, run, exit code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ..batch import in_shard, names_on_stdin, read_list, select, start_new_line
from ..distributed.options import ray_from
from ..environment import Environment
from ..errors import InputError, UsageError
from ..media.images import InputProblem, InputRef, expand_inputs
from ..options import BatchOptions, CommonOptions, ModelOptions, common_options, take
from ..render import Renderer, make_renderer
from ..runner import Job, exit_code, load_engine, prepare, run_jobs, runnable

if TYPE_CHECKING:
    from ..engine.engine import Engine
    from ..engine.types import Request

pass_env = click.make_pass_decorator(Environment, ensure=True)


def current_env() -> Environment:
    """The Environment of the running command (a fresh one outside Click)."""
    ctx = click.get_current_context(silent=True)
    return ctx.ensure_object(Environment) if ctx is not None else Environment()


def renderer_for(common: CommonOptions, env: Environment) -> Renderer:
    return make_renderer(common.out.render_options(common.gen), env)


def run_per_image(task: str, inputs: tuple[str, ...], kwargs: dict[str, Any], env: Environment,
                  instruction: str, meta: dict[str, Any]) -> int:
    """caption and ocr: one job per image, with ``instruction``; in-process or (``--ray``) on a cluster."""
    b = take(BatchOptions, kwargs)
    ray = ray_from(kwargs)
    common = common_options(kwargs)
    if ray is not None:
        from ..distributed import run_on_ray

        return run_on_ray(task, inputs, ray, common, env, batch=b, meta=meta, instruction=instruction)
    refs, problems = batch_inputs(inputs, b, env)
    if not refs and not problems and (b.skip_done or b.shard):
        return 0  # everything is done or belongs to other shards
    return run_image_task(task, per_image_jobs(refs, instruction), problems, common, meta, parallel=b.parallel,
                          env=env)


def run_image_task(task: str, jobs: list[Job], problems: list[InputProblem], common: CommonOptions,
                   meta: dict[str, Any], parallel: int | None = 1, env: Environment | None = None) -> int:
    """Run jobs for an image command and return its exit code."""
    m = common.model
    check_image_tokens(m, task)
    answer = common.gen.answer_schema()
    settings = common.gen.settings(task, answer)
    env = env or current_env()
    renderer = renderer_for(common, env)
    if not jobs and not problems:
        raise InputError("no input given", hint=f"try: kvl {task} photo.jpg")
    slots = prepare(jobs, problems)  # every input checked, in order, before a model is looked for
    if not runnable(slots):  # a missing or broken file should not ask for a model
        return int(exit_code(run_jobs(_no_engine, slots, settings=settings, renderer=renderer, image_max_tokens=None,
                                      meta=meta)))
    from .pull import ensure_model

    model, mmproj, model_name = ensure_model(m.model, m.mmproj, renderer, yes=m.yes)
    meta = {"task": task, "model": model_name, **meta, "image_max_tokens": m.image_tokens(task),
            "temperature": settings.temperature, "seed": settings.seed}
    parallel = max(1, min(parallel or m.default_parallel(), len(runnable(slots))))
    lanes, per_lane = m.plan_parallel(parallel)
    config = m.engine_config(task, model, mmproj, verbose=common.out.verbose, parallel=per_lane, lanes=lanes)
    if parallel > 1:
        # each sequence gets its own cells: as many as one input can use (its images, the longest
        # answer, room for the prompt's text), not --ctx times N
        need = (config.image_max_tokens or 1024) * max(len(j.refs) for j in jobs) + settings.max_tokens + 512
        config.n_ctx = min(config.n_ctx, -(-need // 256) * 256)
    if common.out.dry_run:
        from ..preview import preview_jobs

        return int(exit_code(preview_jobs(slots, config, settings, meta, renderer, env,
                                          as_json=common.out.as_json)))
    remote = None
    if m.server:  # a running `kvl serve` of the same model answers: nothing loads here
        from ..serve.client import remote_engine

        remote = remote_engine(config, meta)
    try:
        outcomes = run_jobs(remote or (lambda first: load_engine(config, renderer, cache=m.cache, encode_ahead=first)),
                            slots,
                            settings=settings, renderer=renderer, image_max_tokens=config.image_max_tokens,
                            meta=meta, parallel=parallel, answer=answer)
    finally:
        renderer.close()
    return int(exit_code(outcomes))


def _no_engine(first: Request | None) -> Engine:
    raise AssertionError("no input can run: no engine is made")


MIN_IMAGE_TOKENS = 8  # below this libmtmd cannot build Kimi-VL's projector graph (it fails to load)


def check_image_tokens(m: ModelOptions, task: str) -> None:
    """--image-min-tokens / --image-max-tokens that libmtmd would refuse, refused before anything
    loads and named (measured on the toy pair, whose patch size and merge are the real projector's:
    a maximum under 8, or a minimum over the maximum, fails the projector's load)."""
    most = m.image_tokens(task)
    name = "--image-max-tokens" if m.image_max_tokens is not None else f"{task}'s image token budget"
    if most < MIN_IMAGE_TOKENS:
        raise UsageError(f"--image-max-tokens {most} is below {MIN_IMAGE_TOKENS}, the fewest tokens the vision "
                         "projector can give an image", hint=f"use --image-max-tokens {MIN_IMAGE_TOKENS} or more")
    least = m.image_min_tokens
    if least is not None and least > most:
        raise UsageError(f"--image-min-tokens {least} is more than {name} ({most})",
                         hint=f"lower --image-min-tokens to {most} or less, or raise --image-max-tokens")


def per_image_jobs(refs: list[InputRef], instruction: str) -> list[Job]:
    return [Job(label=ref.label, refs=[ref], instruction=instruction) for ref in refs]


def batch_inputs(inputs: tuple[str, ...], b: BatchOptions,
                 env: Environment) -> tuple[list[InputRef], list[InputProblem]]:
    """Arguments plus --from, then --skip-done and --shard; says on stderr what it skipped. Each
    problem keeps its place among the inputs that remain."""
    args = list(inputs)
    stdin: bytes | None = None
    if b.from_file:
        args += read_list(b.from_file, env)
    elif not args and not env.stdin_isatty:
        # `find … | kvl caption`: paths on stdin; `kvl caption < photo.jpg`: the image itself
        stdin = env.read_stdin()
        names = names_on_stdin(stdin)
        if names is not None:
            args = names
        elif stdin:
            args = ["-"]
    refs, problems = expand_inputs(args, stdin=env.read_stdin)
    if b.skip_done or b.shard:
        kept, n_done, n_other = select(refs, skip_done=b.skip_done, shard=b.shard)
        problems = _replace_problems(problems, refs, kept, b.shard)
        refs = kept
        notes = []
        if n_done:
            notes.append(f"{n_done} already done in {b.skip_done}")
        if b.shard and n_other:
            notes.append(f"{n_other} left to the other shards (this is {b.shard[0]}/{b.shard[1]})")
        if notes:
            env.stderr.write(f"kvl: skipping {', '.join(notes)}; {len(refs)} to run\n")
    if b.skip_done and (refs or problems):
        start_new_line(b.skip_done, env.stdout)
    return refs, problems


def _replace_problems(problems: list[InputProblem], refs: list[InputRef], kept: list[InputRef],
                      shard: tuple[int, int] | None) -> list[InputProblem]:
    """Problems among the inputs ``select`` kept: each in its shard only, its place counted again."""
    kept_ids = {id(ref) for ref in kept}
    before = [0]  # kept inputs before each place in ``refs``
    for ref in refs:
        before.append(before[-1] + (id(ref) in kept_ids))
    return [InputProblem(p.label, p.error, None if p.at is None else before[p.at]) for p in problems
            if shard is None or in_shard(p.label, shard)]
