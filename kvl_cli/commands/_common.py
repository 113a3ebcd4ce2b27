"""What caption, ocr and ask share: flags to options, options to a run plan, a renderer, the session's
run, the exit code."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click

from ..environment import Environment
from ..media.images import InputProblem
from ..options import BatchOptions, CommonOptions
from ..render import Renderer, make_renderer
from ..render.tee import RecordTee
from ..run.plan import make_plan
from ..run.runner import Job, JobOutcome, exit_code
from ..session import Session
from ..sidecars import with_sidecars
from .flags import common_options, documents_from, ray_from, sidecars_from, take

pass_env = click.make_pass_decorator(Environment, ensure=True)


def run_per_image(task: str, inputs: tuple[str, ...], kwargs: dict[str, Any], env: Environment,
                  instruction: str, meta: dict[str, Any]) -> int:
    """caption and ocr: one job per image, with ``instruction``; in-process or (``--ray``) on a cluster."""
    kwargs["sidecars"] = sidecars_from(kwargs)
    documents = documents_from(kwargs)
    b = take(BatchOptions, kwargs)
    ray = ray_from(kwargs)
    common = common_options(kwargs)
    if ray is not None:
        from ..distributed import run_on_ray

        return run_on_ray(task, inputs, ray, common, env, batch=b, meta=meta, instruction=instruction,
                          documents=documents)
    plan = make_plan(task, common, parallel=b.parallel)
    if meta.get("format") == "markdown":  # a document's pages each after <!-- page N -->
        plan = replace(plan, render=replace(plan.render, page_marks=True))
    renderer = with_sidecars(make_renderer(plan.render, env), b.sidecars, task)
    outcomes = Session(common.model, env=env).run_batch(plan, inputs, b, instruction, renderer, meta,
                                                        dry_run=common.out.dry_run, documents=documents)
    return exit_code(with_failures(outcomes, renderer))


def with_failures(outcomes: list[JobOutcome], renderer: Renderer) -> list[JobOutcome]:
    """The outcomes, an input whose record a sink could not keep (a sidecar) counted as failed."""
    failed = renderer.failed_labels if isinstance(renderer, RecordTee) else {}
    return [JobOutcome(o.label, error=failed[o.label]) if o.label in failed else o for o in outcomes]


def run_image_task(task: str, jobs: list[Job], problems: list[InputProblem], common: CommonOptions,
                   meta: dict[str, Any], parallel: int | None, env: Environment) -> int:
    """Run jobs for an image command and return its exit code. A job whose images must stay under
    the run's budget (a document's pages fitted to --ctx) sets the engine's own limit: the encoder
    then never gives an image more tokens than that, whatever its shape."""
    plan = make_plan(task, common, parallel=parallel)
    lowest = min((job.image_tokens for job in jobs if job.image_tokens), default=None)
    if lowest is not None and lowest < plan.image_tokens:
        plan = replace(plan, image_tokens=lowest)
    renderer = make_renderer(plan.render, env)
    outcomes = Session(common.model, env=env).run_images(plan, jobs, problems, renderer, meta,
                                                         dry_run=common.out.dry_run)
    return exit_code(outcomes)
