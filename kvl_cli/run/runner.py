"""Run a task over inputs: check them all, load the model once, write each result in input order.

A bad input is reported (one line on stderr, or a JSON object with ``error``) and the others
still run; the exit code then says that some failed. Usable without Click.

Every input has its place in the order, failed ones included: an input that fails its check before
the model loads (missing, empty, not an image, oversized) is written where it stands, like one that
fails later. Failures that come before the first good input (all of them, when nothing can run)
are written at once, before the model loads; a failure after a good input waits for the inputs
before it, so stderr and stdout (text or JSON) read in the order the inputs were given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..cache import DiskCache, cap_from_env
from ..engine import stop
from ..engine.engine import Engine
from ..engine.mtmd_handles import default_marker
from ..engine.reasoning import Section
from ..engine.types import (
    Answerer,
    EngineConfig,
    Event,
    FinishReason,
    GenerationSettings,
    ImageInput,
    PhaseEvent,
    Request,
    Result,
    TextEvent,
    Timings,
    Tokens,
)
from ..errors import InputError, KvlError, UsageError, batch_exit_code
from ..media.documents import load_text
from ..media.images import InputProblem, InputRef, load_image, precheck_image
from ..pages import Page
from ..render import Renderer, phase_text
from ..schema import AnswerGate, AnswerSchema
from .ordered import OrderedEmitter, Outcome, run_ordered


def user_text(marker: str, n_images: int, instruction: str, labels: list[str] | None = None) -> str:
    """Images first, then the instruction right after the last one (no newline): the layout
    Kimi-VL was trained on. ``labels``: a text before each image (a document's ``[page 3]``)."""
    if labels:
        return "".join(label + marker for label in labels) + instruction
    return marker * n_images + instruction


@dataclass
class Job:
    """One prompt: its images (one for caption/ocr, several for ask) and the instruction."""

    label: str
    refs: list[InputRef]
    instruction: str
    system: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    image_labels: list[str] | None = None  # a text before each image (a document's pages: ``[page 3]``)
    image_tokens: int | None = None  # most tokens per image, when lower than the run's (pages fitted to --ctx)
    # called with the job's images once decoded, before what an input kept is let go (kvl locate keeps
    # their geometry, to map its answer back to the pixels of each original)
    on_images: Callable[[Job, list[ImageInput]], None] | None = None

    @property
    def page(self) -> Page | None:
        """The page of a document this job is (caption, ocr), else None."""
        if len(self.refs) == 1 and self.refs[0].page is not None:
            return self.refs[0].page.page
        return None

    @property
    def text_only(self) -> bool:
        """A page whose own text is its answer (``--text-layer``): no model needed."""
        return len(self.refs) == 1 and self.refs[0].page is not None and self.refs[0].page.text


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
    disk_cache = open_cache(cache)
    # on a helper thread: Ctrl-C is answered at once, and a load it cuts short is left to the exit
    engine = stop.run_native(lambda: Engine(config, cache=disk_cache, encode_ahead=encode_ahead), abandon=True)
    for warning in engine.warnings:
        renderer.warn(warning)
    return engine


Slot = Job | InputProblem  # an input to run, or one that already failed


def in_order(jobs: list[Job], problems: list[InputProblem]) -> list[Slot]:
    """Jobs and the problems found while expanding the arguments, merged in input order: a problem
    goes before the job at its place ``at`` (a problem without a place goes first)."""
    pending = sorted(problems, key=lambda p: -1 if p.at is None else p.at)  # stable: equal places keep their order
    slots: list[Slot] = []
    for pos, job in enumerate(jobs):
        while pending and (pending[0].at or 0) <= pos:
            slots.append(pending.pop(0))
        slots.append(job)
    return slots + pending


def check(slot: Slot) -> Slot:
    """The job if every image passes its header check, else the problem in its place. A pipe or
    stdin is read here, once, and kept for the job."""
    if isinstance(slot, InputProblem):
        return slot
    try:
        for ref in slot.refs:
            precheck_image(ref)
    except InputError as exc:
        return InputProblem(slot.label, exc)
    return slot


def prepare(jobs: list[Job], problems: list[InputProblem]) -> list[Slot]:
    """Every input in order, each job header-checked before anything loads (a job that fails
    becomes the problem in its place)."""
    return [check(slot) for slot in in_order(jobs, problems)]


def runnable(slots: list[Slot]) -> list[Job]:
    return [slot for slot in slots if isinstance(slot, Job)]


def needs_model(slots: list[Slot]) -> bool:
    """Whether any job needs the model (a page answered by its own text does not)."""
    return any(not job.text_only for job in runnable(slots))


def text_result(text: str) -> Result:
    """A page's own text as its answer: nothing generated, nothing encoded."""
    return Result(answer=text, thinking="", finish_reason=FinishReason.STOP, tokens=Tokens(), timings=Timings(),
                  image_tokens=[])


def _page(slot: Slot) -> Page | None:
    return slot.page if isinstance(slot, Job) else None


class JobSink:
    """Writes a batch's inputs through the renderer and keeps their outcomes (see ``ordered``)."""

    def __init__(self, slots: list[Slot], renderer: Renderer, meta: dict[str, Any],
                 gate: AnswerGate | None = None) -> None:
        self.slots = slots
        self.renderer = renderer
        self.meta = meta
        self.gate = gate or AnswerGate(None)  # --schema: the answer is held back until it validates
        self.outcomes: list[JobOutcome] = []
        self.begun = 0
        # a document's pages after its first are one input with it (one header, page breaks between)
        self.inputs = sum(1 for slot in slots if (page := _page(slot)) is None or page.first)

    def begin(self, pos: int) -> None:
        # the index counts answers begun, so the first header has no blank line before it even
        # when failed inputs came first (as `head a b` prints after "cannot open")
        page = _page(self.slots[pos])
        if page is None or page.first or not self.begun:
            self.begun += 1
        self.renderer.begin(self.slots[pos].label, self.begun, self.inputs, page=page)

    def event(self, pos: int, ev: Event) -> None:
        if self.gate.passes(ev):
            self.renderer.event(ev)

    def progress(self, pos: int, ev: PhaseEvent) -> None:
        label, _ = phase_text(ev)
        self.renderer.status(label, f"{self.slots[pos].label} · {len(self.outcomes)}/{len(self.slots)} done")

    def done(self, pos: int, outcome: Outcome) -> None:
        slot = self.slots[pos]
        meta = slot.meta if isinstance(slot, Job) else {}
        if isinstance(outcome, Result):
            page = _page(slot)
            outcome, meta = self._checked(outcome, meta, slot.label, page.number if page is not None else None)
        if isinstance(outcome, KvlError):
            self.renderer.error(slot.label, outcome, page=_page(slot))
            self.outcomes.append(JobOutcome(slot.label, error=outcome))
            return
        self.renderer.end(slot.label, outcome, {**self.meta, **meta})
        self.outcomes.append(JobOutcome(slot.label, result=outcome))


    def _checked(self, result: Result, meta: dict[str, Any], label: str,
                 page: int | None = None) -> tuple[Outcome, dict[str, Any]]:
        """With --schema: the validated answer, streamed now, and its data; or the reason there is none."""
        try:
            result, extra = self.gate.release(result, self.renderer.event, label, page)
        except KvlError as exc:
            return exc, meta
        return result, {**meta, **extra}


class JobRequests:
    """Each job's images decoded when the engine asks for its request (so a long batch is never
    all in memory), the first one ahead of the load; what an input kept (a pipe's bytes) is let go
    once its request is built."""

    def __init__(self, slots: list[Slot], settings: GenerationSettings, image_max_tokens: int | None) -> None:
        self.slots = slots
        self.settings = settings
        self.image_max_tokens = image_max_tokens
        self._ahead: dict[int, list[ImageInput]] = {}

    def _job(self, pos: int) -> Job:
        job = self.slots[pos]
        assert isinstance(job, Job)
        return job

    def _images(self, job: Job) -> list[ImageInput]:
        images = [load_image(ref, max_tokens=job.image_tokens or self.image_max_tokens) for ref in job.refs]
        if job.on_images is not None:
            job.on_images(job, images)
        return images

    def request(self, pos: int, marker: str) -> Request:
        job = self._job(pos)
        try:
            images = self._ahead.pop(pos, None)
            if images is None:
                images = self._images(job)
        finally:
            for ref in job.refs:
                ref.release()
        return self._build(job, images, marker)

    def first(self) -> Request | None:
        """The first job's request, decoded now so the engine can encode it while loading (its images
        are kept for the job); None if they are bad (reported when the job runs)."""
        pos = next((i for i, slot in enumerate(self.slots) if isinstance(slot, Job) and not slot.text_only), None)
        if pos is None:
            return None
        try:
            self._ahead[pos] = self._images(self._job(pos))
        except InputError:
            return None
        return self._build(self._job(pos), self._ahead[pos], default_marker())

    def _build(self, job: Job, images: list[ImageInput], marker: str) -> Request:
        return Request(user_text=user_text(marker, len(images), job.instruction, job.image_labels), images=images,
                       system=job.system, settings=self.settings)

    def stream(self, marker: str, emitter: OrderedEmitter) -> Iterator[tuple[int, Request]]:
        for pos, slot in enumerate(self.slots):
            if not isinstance(slot, Job):
                continue  # settled before the load
            try:
                if slot.text_only:
                    self._answer_with_text(pos, slot, emitter)
                    continue
                yield pos, self.request(pos, marker)
            except InputError as exc:
                emitter.settle(pos, exc)

    def _answer_with_text(self, pos: int, job: Job, emitter: OrderedEmitter) -> None:
        """A page whose own text is the answer (``--text-layer``): streamed and settled, no model."""
        ref = job.refs[0]
        assert ref.page is not None
        try:
            text = load_text(ref.label, ref.source(), ref.page)
        finally:
            ref.release()
        emitter.event(pos, TextEvent(Section.ANSWER, text))
        emitter.settle(pos, text_result(text))


def run_jobs(engine_factory: Callable[[Request | None], Answerer], slots: list[Slot], *, settings: GenerationSettings,
             renderer: Renderer, image_max_tokens: int | None,
             meta: dict[str, Any], parallel: int = 1, answer: AnswerSchema | None = None,
             gate: AnswerGate | None = None) -> list[JobOutcome]:
    """Run every job of ``slots`` (from ``prepare``), writing results in input order; one outcome
    per input (failed ones included, in their place; with no job, only those, and no engine).
    Raises ``Interrupted`` on Ctrl-C, after writing what finished.

    With ``parallel`` > 1, up to that many jobs are worked on at once; the first in order streams
    live, the others are written whole when their turn comes.
    """
    sink = JobSink(slots, renderer, dict(meta), gate or AnswerGate(answer))
    emitter = OrderedEmitter(sink)
    for pos, slot in enumerate(slots):
        if isinstance(slot, InputProblem):
            emitter.settle(pos, slot.error)  # written now if no good input comes before it
    if not runnable(slots):
        return sink.outcomes
    requests = JobRequests(slots, settings, image_max_tokens)
    if not needs_model(slots):  # every page answered by its own text: no model loads
        engine_factory = TextOnly.make
    try:
        engine = engine_factory(requests.first())
    except BaseException:
        emitter.flush()  # the failures found so far, in order, before the load's own error
        raise
    sink.meta["load_s"] = round(engine.load_seconds, 3)
    try:
        run_ordered(engine, requests.stream(engine.marker, emitter), emitter, parallel)
    finally:
        renderer.close()
    return sink.outcomes


class TextOnly:
    """The engine of a run that needs none (every page has its own text): it runs the requests'
    source, which answers each page itself, and is asked for nothing."""

    warnings: list[str] = []
    load_seconds = 0.0
    marker = ""

    @classmethod
    def make(cls, first: Request | None) -> Answerer:
        return cls()

    def generate_many(self, requests: Any, parallel: int | None = None) -> Iterator[Any]:
        for request in requests:
            raise AssertionError(f"a page without its own text reached the text-only run: {request}")
        yield from ()

    def close(self) -> None:
        pass


def exit_code(outcomes: list[JobOutcome]) -> int:
    """0 when every input succeeded, 5 when some failed, else the first failure's own code."""
    failures = [int(o.error.exit_code) for o in outcomes if o.error is not None]
    return batch_exit_code(failures, len(outcomes) - len(failures))
