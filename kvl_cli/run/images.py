"""caption, ocr and ask on this machine: one prompt per job, every input checked before the pair is
looked for, the plan fitted to the inputs, then each job run (or, with ``--dry-run``, its prompt shown).

1) check every input, in order (a failure keeps its place); 2) nothing can run: write the failures,
no model; 3) find the pair and fit the plan to the inputs; 4) show the prompts, or 5) run the jobs
through the run's engine (a running ``kvl serve``, or this process's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..engine.types import Answerer, EngineConfig, Request
from ..environment import Environment
from ..errors import InputError
from ..media.documents import DocumentOptions
from ..media.images import InputProblem, InputRef
from ..render import Renderer
from ..schema import AnswerGate
from ..store.catalog import Pair
from .batch import batch_inputs, done_pages, done_records
from .documents import expand_documents, page_meta, pages_note
from .plan import RunPlan
from .preview import preview_jobs
from .runner import Job, JobOutcome, needs_model, prepare, run_jobs, runnable

# (config, the run's record fields) -> the run's engine factory; a running server names itself in the fields
EngineFor = Callable[[EngineConfig, dict[str, Any]], Callable[[Request | None], Answerer]]


def per_image_jobs(refs: list[InputRef], instruction: str, *, text_layer: bool = False) -> list[Job]:
    """One job per image, and per page of a document (its record says which: ``page``, ``pages``)."""
    return [Job(label=ref.label, refs=[ref], instruction=instruction, meta=page_meta(ref, text_layer)) for ref in refs]


def run_image_jobs(plan: RunPlan, jobs: list[Job], problems: list[InputProblem], renderer: Renderer,
                   meta: dict[str, Any], *, find_pair: Callable[[], Pair], engine_for: EngineFor, env: Environment,
                   dry_run: bool = False, gate: AnswerGate | None = None) -> list[JobOutcome]:
    """One outcome per input, failures in their place (see the module's docstring). ``gate``: the check
    each answer passes (default: the plan's schema's)."""
    if not jobs and not problems:
        raise InputError("no input given", hint=f"try: kvl {plan.task} photo.jpg")
    slots = prepare(jobs, problems)  # every input checked, in order, before a model is looked for
    todo = runnable(slots)
    if not todo or (not needs_model(slots) and not dry_run):  # a missing or broken file should not ask for a
        # model, nor a document whose pages all have their own text (--text-layer)
        return run_jobs(_no_engine, slots, settings=plan.settings, renderer=renderer, image_max_tokens=None,
                        meta={"task": plan.task, "model": None, **meta})
    model, mmproj, name = find_pair()
    meta = {"task": plan.task, "model": name, **meta, "image_max_tokens": plan.image_tokens,
            "temperature": plan.settings.temperature, "seed": plan.settings.seed}
    plan = plan.fit(len(todo), max(len(j.refs) for j in jobs))
    config = plan.engine_config(model, mmproj)
    if dry_run:
        return preview_jobs(slots, config, plan.settings, meta, renderer, env, as_json=plan.render.json)
    factory = engine_for(config, meta)
    try:
        return run_jobs(factory, slots, settings=plan.settings, renderer=renderer,
                        image_max_tokens=config.image_max_tokens, meta=meta, parallel=plan.parallel or 1,
                        gate=gate or plan.gate())
    finally:
        renderer.close()


def run_batch(plan: RunPlan, inputs: tuple[str, ...], batch: Any, instruction: str, renderer: Renderer,
              meta: dict[str, Any], *, find_pair: Callable[[], Pair], engine_for: EngineFor, env: Environment,
              dry_run: bool = False, documents: DocumentOptions | None = None) -> list[JobOutcome]:
    """caption and ocr: the arguments, ``--from``, ``--skip-done`` and ``--shard`` (``batch``) make one
    job per image with ``instruction``, and one per selected page of each document (``documents``);
    a document half done (``--skip-done``, sidecars) resumes at its first page not done."""
    documents = documents or DocumentOptions()
    done = done_records(batch)
    refs, problems = batch_inputs(inputs, batch, env, plan.task, done)
    skip = done_pages(batch, plan.task, done)
    refs, problems, skipped = expand_documents(refs, problems, documents, skip)
    if (note := pages_note(refs, documents)) is not None:
        env.stderr.write(note)
    if skipped:
        env.stderr.write(f"kvl: skipping {skipped} page{'s' if skipped != 1 else ''} already done; "
                         f"{len(refs)} to run\n")
    if not refs and not problems and (batch.skip_done or batch.shard or batch.sidecars):
        return []  # everything is done or belongs to other shards
    return run_image_jobs(plan, per_image_jobs(refs, instruction, text_layer=documents.text_layer), problems,
                          renderer, meta, find_pair=find_pair, engine_for=engine_for, env=env, dry_run=dry_run)


def _no_engine(first: Request | None) -> Answerer:
    raise AssertionError("no input can run: no engine is made")
