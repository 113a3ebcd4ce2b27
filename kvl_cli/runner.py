"""Run a task over inputs: check them all, load the model once, write each result in input order.

A bad input is reported (one line on stderr, or a JSON object with ``error``) and the others
still run; the exit code then says that some failed. Usable without Click.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .cache import DiskCache, cap_from_env
from .engine.engine import Engine
from .engine.media_handles import default_marker
from .engine.types import EngineConfig, Event, GenerationSettings, ImageInput, PhaseEvent, Request, Result
from .errors import ExitCode, InputError, KvlError, UsageError
from .media.images import InputProblem, InputRef, load_image, precheck_image
from .ordered import OrderedEmitter, Outcome, run_ordered
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
class JobOutcome:
    label: str
    result: Result | None = None
    error: KvlError | None = None


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
                encode_ahead: Request | None = None) -> Engine:
    renderer.status("loading model", "and encoding the first image" if encode_ahead is not None else "")
    engine = Engine(config, cache=open_cache(cache), encode_ahead=encode_ahead)
    for warning in engine.warnings:
        renderer.warn(warning)
    return engine


def precheck_jobs(jobs: list[Job], problems: list[InputProblem],
                  renderer: Renderer) -> tuple[list[Job], list[JobOutcome]]:
    """Header-check every image before the model loads; report each problem at once."""
    failed = [JobOutcome(p.label, error=p.error) for p in problems]
    for p in problems:
        renderer.error(p.label, p.error)
    good: list[Job] = []
    for job in jobs:
        try:
            for ref in job.refs:
                precheck_image(ref)
        except InputError as exc:
            renderer.error(job.label, exc)
            failed.append(JobOutcome(job.label, error=exc))
            continue
        good.append(job)
    return good, failed


class JobSink:
    """Writes a batch's inputs through the renderer and keeps their outcomes (see ``ordered``)."""

    def __init__(self, jobs: list[Job], renderer: Renderer, meta: dict[str, Any]) -> None:
        self.jobs = jobs
        self.renderer = renderer
        self.meta = meta
        self.outcomes: list[JobOutcome] = []

    def begin(self, pos: int) -> None:
        self.renderer.begin(self.jobs[pos].label, pos + 1, len(self.jobs))

    def event(self, pos: int, ev: Event) -> None:
        self.renderer.event(ev)

    def progress(self, pos: int, ev: PhaseEvent) -> None:
        label, _ = phase_text(ev)
        self.renderer.status(label, f"{self.jobs[pos].label} · {len(self.outcomes)}/{len(self.jobs)} done")

    def done(self, pos: int, outcome: Outcome) -> None:
        job = self.jobs[pos]
        if isinstance(outcome, KvlError):
            self.renderer.error(job.label, outcome)
            self.outcomes.append(JobOutcome(job.label, error=outcome))
            return
        self.renderer.end(job.label, outcome, {**self.meta, **job.meta})
        self.outcomes.append(JobOutcome(job.label, result=outcome))


class JobRequests:
    """Each job's images decoded when the engine asks for its request (so a long batch is never
    all in memory), the first one ahead of the load."""

    def __init__(self, jobs: list[Job], settings: GenerationSettings, image_max_tokens: int | None) -> None:
        self.jobs = jobs
        self.settings = settings
        self.image_max_tokens = image_max_tokens
        self._ahead: dict[int, list[ImageInput]] = {}

    def request(self, pos: int, marker: str) -> Request:
        images = self._ahead.pop(pos, None)
        if images is None:
            images = [load_image(ref, max_tokens=self.image_max_tokens) for ref in self.jobs[pos].refs]
        return self._build(pos, images, marker)

    def first(self) -> Request | None:
        """The first job's request, decoded now so the engine can encode it while loading (its images
        are kept for the job); None if they are bad (reported when the job runs)."""
        try:
            self._ahead[0] = [load_image(ref, max_tokens=self.image_max_tokens) for ref in self.jobs[0].refs]
        except InputError:
            return None
        return self._build(0, self._ahead[0], default_marker())

    def _build(self, pos: int, images: list[ImageInput], marker: str) -> Request:
        job = self.jobs[pos]
        return Request(user_text=user_text(marker, len(images), job.instruction), images=images,
                       system=job.system, settings=self.settings)

    def stream(self, marker: str, emitter: OrderedEmitter) -> Iterator[tuple[int, Request]]:
        for pos in range(len(self.jobs)):
            try:
                yield pos, self.request(pos, marker)
            except InputError as exc:
                emitter.settle(pos, exc)


def run_jobs(engine_factory: Callable[[Request | None], Engine], jobs: list[Job], problems: list[InputProblem], *,
             settings: GenerationSettings, renderer: Renderer, image_max_tokens: int | None,
             meta: dict[str, Any], parallel: int = 1) -> list[JobOutcome]:
    """Run every job, writing results in input order; one outcome per input (failed ones included).
    Raises ``Interrupted`` on Ctrl-C, after writing what finished.

    With ``parallel`` > 1, up to that many jobs are worked on at once; the first in order streams
    live, the others are written whole when their turn comes.
    """
    jobs, outcomes = precheck_jobs(jobs, problems, renderer)
    if not jobs:
        return outcomes
    requests = JobRequests(jobs, settings, image_max_tokens)
    engine = engine_factory(requests.first())
    sink = JobSink(jobs, renderer, {**meta, "load_s": round(engine.load_seconds, 3)})
    emitter = OrderedEmitter(sink)
    try:
        run_ordered(engine, requests.stream(engine.marker, emitter), emitter, parallel)
    finally:
        renderer.close()
    return outcomes + sink.outcomes


def exit_code(outcomes: list[JobOutcome]) -> ExitCode:
    """0 when every input succeeded, 5 when some failed, else the first failure's own code."""
    errors = [o.error for o in outcomes if o.error is not None]
    if not errors:
        return ExitCode.OK
    if len(errors) < len(outcomes):
        return ExitCode.PARTIAL
    return errors[0].exit_code
