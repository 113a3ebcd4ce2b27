"""What caption, ocr and ask share: flags to options, options to a run plan, a renderer, the session's
run, the exit code."""

from __future__ import annotations

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
from .flags import common_options, ray_from, sidecars_from, take

pass_env = click.make_pass_decorator(Environment, ensure=True)


def run_per_image(task: str, inputs: tuple[str, ...], kwargs: dict[str, Any], env: Environment,
                  instruction: str, meta: dict[str, Any]) -> int:
    """caption and ocr: one job per image, with ``instruction``; in-process or (``--ray``) on a cluster."""
    kwargs["sidecars"] = sidecars_from(kwargs)
    b = take(BatchOptions, kwargs)
    ray = ray_from(kwargs)
    common = common_options(kwargs)
    if ray is not None:
        from ..distributed import run_on_ray

        return run_on_ray(task, inputs, ray, common, env, batch=b, meta=meta, instruction=instruction)
    plan = make_plan(task, common, parallel=b.parallel)
    renderer = with_sidecars(make_renderer(plan.render, env), b.sidecars, task)
    outcomes = Session(common.model, env=env).run_batch(plan, inputs, b, instruction, renderer, meta,
                                                        dry_run=common.out.dry_run)
    return exit_code(with_failures(outcomes, renderer))


def with_failures(outcomes: list[JobOutcome], renderer: Renderer) -> list[JobOutcome]:
    """The outcomes, an input whose record a sink could not keep (a sidecar) counted as failed."""
    failed = renderer.failed_labels if isinstance(renderer, RecordTee) else {}
    return [JobOutcome(o.label, error=failed[o.label]) if o.label in failed else o for o in outcomes]


def run_image_task(task: str, jobs: list[Job], problems: list[InputProblem], common: CommonOptions,
                   meta: dict[str, Any], parallel: int | None, env: Environment) -> int:
    """Run jobs for an image command and return its exit code."""
    plan = make_plan(task, common, parallel=parallel)
    renderer = make_renderer(plan.render, env)
    outcomes = Session(common.model, env=env).run_images(plan, jobs, problems, renderer, meta,
                                                         dry_run=common.out.dry_run)
    return exit_code(outcomes)
