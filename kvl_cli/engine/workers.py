"""Workers: each a context, a projector and the scheduler that runs requests on them.

On a CPU, a batch runs on several workers at once (``EngineConfig.lanes``), each in its own
thread with its share of the cores; a worker whose inputs are used up hands its cores to the
others (``ThreadBudget``). Requests and events pass through queues, so the caller's code (reading
images, rendering) runs on the calling thread only.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from ..cache import DiskCache
from ..errors import Terminated
from . import stop
from .encoder import EarlyEncodes, ImageEncoder
from .llama_handles import Context, Model
from .mtmd_handles import Projector
from .prefill import Prefill
from .prefix import ResidentPrefixes, SavedPrefixes
from .prompt import CacheKeys, PreparedPrompt, prepare
from .scheduler import Scheduler
from .types import EngineConfig, Request, Tagged


class ThreadBudget:
    """The cores the workers share: each running worker's decodes get an equal part."""

    def __init__(self, cores: int) -> None:
        self.cores = cores
        self._running = 1
        self._lock = threading.Lock()

    def begin(self, workers: int) -> None:
        with self._lock:
            self._running = max(1, workers)

    def finished_one(self) -> None:
        with self._lock:
            self._running = max(1, self._running - 1)

    def share(self) -> int:
        with self._lock:
            return max(1, self.cores // self._running)


class Worker:
    """One context and projector on the shared model, with its caches and scheduler."""

    def __init__(self, model: Model, ctx: Context, projector: Projector, *, config: EngineConfig, n_embd: int,
                 keys: CacheKeys, cache: DiskCache | None, early: EarlyEncodes, budget: ThreadBudget) -> None:
        self.model = model
        self.ctx = ctx
        self.projector = projector
        self.budget = budget
        self.encoder = ImageEncoder(projector, n_embd, keys, cache, early)
        self.resident = ResidentPrefixes(ctx, lambda token: model.piece(token, special=True))
        saved = SavedPrefixes(ctx, cache, keys) if cache is not None and cache.enabled else None
        self.prefill = Prefill(ctx, projector, self.encoder, self.resident, saved, keys, config.n_batch,
                               self.sync_threads)
        self.scheduler = Scheduler(ctx, model, self.prefill, self.resident, self.prepare, self.sync_threads)

    def prepare(self, request: Request) -> PreparedPrompt:
        return prepare(request, self.model, self.projector)

    def sync_threads(self) -> None:
        """Before a decode: take the threads this worker may use now."""
        self.ctx.set_threads(self.budget.share())

    def run(self, source: Iterable[tuple[int, Request | None]], slots: int) -> Generator[Tagged, None, None]:
        return self.scheduler.run(source, slots)


class WorkerPool:
    """Several workers, a thread each, fed from one request stream on the calling thread."""

    def __init__(self, workers: list[Worker], budget: ThreadBudget) -> None:
        self.workers = workers
        self.budget = budget

    def run(self, source: Iterator[tuple[int, Request | None]], slots: int) -> Iterator[Tagged]:
        """Yield every worker's ``(index, event)``; ``slots`` sequences per worker."""
        run = _PoolRun(source, len(self.workers))
        self.budget.begin(len(self.workers))
        with ThreadPoolExecutor(len(self.workers), thread_name_prefix="kvl-worker") as pool:
            futures = [pool.submit(run.work, k, w, slots) for k, w in enumerate(self.workers)]
            try:
                yield from run.serve(self.budget)
            finally:
                run.stop_all()
                _wait(futures)
        self.budget.begin(1)


def _wait(futures: list[Future[None]]) -> None:
    for f in futures:
        f.result()


class _PoolRun:
    """The messages of one pool run: workers ask for requests ("need") and send events."""

    def __init__(self, source: Iterator[tuple[int, Request | None]], n: int) -> None:
        self.source = source
        self.exhausted = False
        self.events: queue.Queue[tuple[str, int, object]] = queue.Queue()
        self.inboxes: list[queue.Queue[tuple[int, Request | None] | None]] = [queue.Queue() for _ in range(n)]
        self.stop = threading.Event()
        self.running = set(range(n))

    def _feed(self, k: int) -> Iterator[tuple[int, Request | None]]:
        while True:
            self.events.put(("need", k, None))
            item = self.inboxes[k].get()
            if item is None:
                return
            yield item

    def work(self, k: int, worker: Worker, slots: int) -> None:
        gen = worker.run(self._feed(k), slots)
        try:
            self._drive(k, gen)
        except BaseException as exc:  # a bug: the caller re-raises it
            self.events.put(("crash", k, exc))
        finally:
            gen.close()
            self.events.put(("end", k, None))

    def _drive(self, k: int, gen: Generator[Tagged, None, None]) -> None:
        thrown = False
        try:
            while True:
                if self.stop.is_set() and not thrown:
                    thrown = True  # Ctrl-C: the worker ends its answers as interrupted, text kept
                    item = gen.throw(KeyboardInterrupt())
                else:
                    item = next(gen)
                self.events.put(("event", k, item))
        except (StopIteration, KeyboardInterrupt):
            pass

    def serve(self, budget: ThreadBudget) -> Iterator[Tagged]:
        try:
            while self.running:
                yield from self._handle(budget, *self.events.get())
        except KeyboardInterrupt as exc:
            stop.request(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)  # native work too
            self.stop_all()
            while self.running:
                yield from self._handle(budget, *self.events.get())

    def _handle(self, budget: ThreadBudget, kind: str, k: int, item: object) -> Iterator[Tagged]:
        if kind == "need":
            nxt = None if self.exhausted or self.stop.is_set() else next(self.source, None)
            self.exhausted = self.exhausted or nxt is None
            self.inboxes[k].put(nxt)
        elif kind == "event":
            yield item  # type: ignore[misc]
        elif kind == "crash":
            raise item  # type: ignore[misc]
        else:
            self.running.discard(k)
            budget.finished_one()  # the workers still busy take the finished one's cores

    def stop_all(self) -> None:
        self.stop.set()
        for box in self.inboxes:
            box.put(None)
