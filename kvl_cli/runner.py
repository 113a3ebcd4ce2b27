"""Run a task over inputs: check them all, load the model once, stream each result.

A bad input is reported (one line on stderr, or a JSON object with ``error``) and the others
still run; the exit code then says that some failed. Usable without Click.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .cache import DiskCache, cap_from_env
from .engine.engine import (
    DoneEvent,
    Engine,
    EngineConfig,
    Event,
    FailedEvent,
    GenerationSettings,
    ImageInput,
    PhaseEvent,
    Request,
    Result,
)
from .errors import ContextError, EngineError, ExitCode, InputError, KvlError, UsageError
from .media.images import InputProblem, InputRef, load_image, precheck_image
from .render import Renderer, phase_text
from .tasks import user_text


@dataclass
class Job:
    """One prompt: its images (one for caption/ocr, several for ask) and the instruction."""

    label: str
    refs: list[InputRef]
    instruction: str
    system: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    label: str
    result: Result | None = None
    error: KvlError | None = None


class Interrupted(Exception):
    """Ctrl-C: the batch stopped; what was printed stays."""


def open_cache(enabled: bool = True) -> DiskCache | None:
    """The disk cache, unless turned off (``--no-cache``, ``KVL_CACHE_SIZE=0``)."""
    if not enabled:
        return None
    try:
        cap = cap_from_env()
    except ValueError as exc:
        raise UsageError(f"KVL_CACHE_SIZE: {exc}", hint="set it like 4G or 500M, or 0 to turn the cache off") from None
    return DiskCache(cap=cap) if cap > 0 else None


def load_engine(config: EngineConfig, renderer: Renderer, *, cache: bool = True,
                prefetch: Request | None = None) -> Engine:
    renderer.status("loading model", "and encoding the first image" if prefetch is not None else "")
    engine = Engine(config, cache=open_cache(cache), prefetch=prefetch)
    for warning in engine.warnings:
        renderer.warn(warning)
    return engine


def precheck_jobs(jobs: list[Job], problems: list[InputProblem], renderer: Renderer) -> tuple[list[Job], list[Outcome]]:
    """Header-check every image before the model loads; report each problem at once."""
    failed = [Outcome(p.label, error=p.error) for p in problems]
    for p in problems:
        renderer.error(p.label, p.error)
    good: list[Job] = []
    for job in jobs:
        try:
            for ref in job.refs:
                precheck_image(ref)
        except InputError as exc:
            renderer.error(job.label, exc)
            failed.append(Outcome(job.label, error=exc))
            continue
        good.append(job)
    return good, failed


def stream(engine: Engine, request: Request, renderer: Renderer) -> Iterator[Event]:
    for ev in engine.generate(request):
        renderer.event(ev)
        yield ev


def media_marker() -> str:
    """libmtmd's image placeholder, known before any model is loaded."""
    from .engine import native

    return str(native.mtmd().mtmd_default_marker().decode("utf-8"))


def run_jobs(engine_factory: Callable[[Request | None], Engine], jobs: list[Job], problems: list[InputProblem], *,
             settings: GenerationSettings, renderer: Renderer, image_max_tokens: int | None,
             meta: dict[str, Any], parallel: int = 1) -> list[Outcome]:
    """Run every job; return one Outcome per input (failed ones included). Raises Interrupted.

    With ``parallel`` > 1, up to that many jobs generate together (one ``llama_decode`` carries a
    token for each): more answers per minute, each printed whole as it finishes.
    """
    jobs, outcomes = precheck_jobs(jobs, problems, renderer)
    if not jobs:
        return outcomes
    # the first job's images are decoded now, so that the engine can encode them while the text
    # model loads (see Engine); they are used for that job below, not decoded again
    ahead: dict[int, list[ImageInput]] = {}
    first = None
    try:
        ahead[0] = [load_image(ref, max_tokens=image_max_tokens) for ref in jobs[0].refs]
        first = Request(user_text=user_text(media_marker(), len(ahead[0]), jobs[0].instruction), images=ahead[0],
                        system=jobs[0].system, settings=settings)
    except InputError:
        pass  # reported when the job runs
    engine = engine_factory(first)

    def images_of(index: int, job: Job) -> list[ImageInput]:
        got = ahead.pop(index, None)
        return got if got is not None else [load_image(ref, max_tokens=image_max_tokens) for ref in job.refs]

    meta = {**meta, "load_s": round(engine.load_seconds, 3)}
    try:
        if parallel > 1 and len(jobs) > 1:
            _run_parallel(engine, jobs, outcomes, settings=settings, renderer=renderer,
                          images_of=images_of, meta=meta, parallel=parallel)
            return outcomes
        for index, job in enumerate(jobs, 1):
            renderer.begin(job.label, index, len(jobs))
            try:
                images = images_of(index - 1, job)
                request = Request(
                    user_text=user_text(engine.marker, len(images), job.instruction),
                    images=images, system=job.system, settings=settings,
                )
                result = None
                for ev in stream(engine, request, renderer):
                    if isinstance(ev, DoneEvent):
                        result = ev.result
                assert result is not None
                renderer.end(job.label, result, {**meta, **job.meta})
                outcomes.append(Outcome(job.label, result=result))
                if result.finish_reason == "interrupted":
                    raise Interrupted()
            except (InputError, ContextError, EngineError) as exc:
                renderer.error(job.label, exc)
                outcomes.append(Outcome(job.label, error=exc))
            except KeyboardInterrupt:
                raise Interrupted() from None
    finally:
        renderer.close()
    return outcomes


def _run_parallel(engine: Engine, jobs: list[Job], outcomes: list[Outcome], *, settings: GenerationSettings,
                  renderer: Renderer, images_of: Callable[[int, Job], list[ImageInput]], meta: dict[str, Any],
                  parallel: int) -> None:
    order: list[Job] = []  # request index -> job

    def requests() -> Iterator[Request]:
        for i, job in enumerate(jobs):
            try:
                images = images_of(i, job)
            except InputError as exc:
                renderer.error(job.label, exc)
                outcomes.append(Outcome(job.label, error=exc))
                continue
            order.append(job)
            yield Request(user_text=user_text(engine.marker, len(images), job.instruction), images=images,
                          system=job.system, settings=settings)

    # results come out in the inputs' order, text and JSON alike: a finished answer waits only for
    # the ones before it, which are already running; on Ctrl-C whatever finished is written
    buffers: dict[int, list[Event]] = {}
    ready: dict[int, Result | KvlError] = {}
    shown = 0  # request indexes below this are printed
    finished = 0
    interrupted = False

    def show(index: int, outcome: Result | KvlError) -> None:
        nonlocal finished
        job = order[index]
        finished += 1
        if isinstance(outcome, KvlError):
            renderer.error(job.label, outcome)
            outcomes.append(Outcome(job.label, error=outcome))
            return
        renderer.begin(job.label, finished, len(jobs))
        for buffered in buffers.pop(index, []):
            renderer.event(buffered)
        renderer.end(job.label, outcome, {**meta, **job.meta})
        outcomes.append(Outcome(job.label, result=outcome))

    def settle(index: int, outcome: Result | KvlError) -> None:
        nonlocal shown
        ready[index] = outcome
        while shown in ready:
            show(shown, ready.pop(shown))
            shown += 1

    try:
        try:
            for index, ev in engine.generate_many(requests(), parallel):
                job = order[index]
                if isinstance(ev, FailedEvent):
                    settle(index, ev.error)
                elif isinstance(ev, DoneEvent):
                    interrupted = interrupted or ev.result.finish_reason == "interrupted"
                    settle(index, ev.result)
                elif isinstance(ev, PhaseEvent):
                    label, _ = phase_text(ev)
                    renderer.status(label, f"{job.label} · {finished}/{len(jobs)} done")
                else:
                    buffers.setdefault(index, []).append(ev)
        finally:
            for index in sorted(ready):  # interrupted or failed: what finished is still printed
                show(index, ready.pop(index))
    except KeyboardInterrupt:
        raise Interrupted() from None
    if interrupted:
        raise Interrupted()


def exit_code(outcomes: list[Outcome]) -> ExitCode:
    errors = [o.error for o in outcomes if o.error is not None]
    if not errors:
        return ExitCode.OK
    if len(errors) < len(outcomes):
        return ExitCode.PARTIAL
    return errors[0].exit_code
