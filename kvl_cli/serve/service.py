"""The engine thread: one ``Engine``, fed from a bounded queue, its events handed back to each request.

HTTP handlers ``submit`` a ``Job`` (an engine request and the event loop to answer on). One thread
owns the engine: it loads the model, then runs a single ``generate_many`` for the server's life,
whose request source is the queue: a free sequence takes the next job at once; with jobs running and
none waiting the source answers ``None`` (go on generating), and with nothing running it waits on
the queue. So requests that arrive together share each decode (batched across sequences), and a
client that goes away sets its request's ``cancel``: the scheduler ends that sequence at its next
step and the next job takes the slot. A full queue is refused at once (503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..engine.engine import Engine
from ..engine.types import AnyEvent, DoneEvent, FailedEvent, Request
from ..errors import KvlError
from .errors import ApiError, busy, internal

log = logging.getLogger("kvl.serve")
IDLE_WAIT_S = 0.5  # with nothing running, how long the engine thread waits on the queue before looking up
Message = AnyEvent | ApiError


@dataclass(eq=False)  # a job is itself: the queue finds it by identity
class Job:
    """One HTTP request's answer: its engine request and where its events go (an asyncio queue)."""

    request: Request
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    started: float = field(default_factory=time.monotonic)

    def send(self, message: Message) -> None:
        """From the engine thread: hand an event to the request's handler."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, message)
        except RuntimeError:  # the event loop is closed: the server is gone
            pass

    def cancel(self) -> None:
        if self.request.cancel is not None:
            self.request.cancel.set()


class Service:
    """Loads the engine on its own thread and runs every job on it."""

    def __init__(self, load: Callable[[], Engine], *, parallel: int, queue_size: int) -> None:
        self._load = load
        self.parallel = parallel
        self.queue_size = queue_size
        self.state = "loading"  # loading, ready, failed, stopped
        self.error: KvlError | None = None
        self.engine: Engine | None = None
        self.load_seconds = 0.0
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: dict[int, Job] = {}
        self._count = 0
        self._stopping = threading.Event()
        self._avg_s = 5.0  # a running mean of answer times, for Retry-After
        self._thread = threading.Thread(target=self._main, name="kvl-engine", daemon=True)

    # -- the HTTP side ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; ApiError 503 when the queue is full or the model is not ready."""
        with self._cond:
            self._check()
            self._waiting.append(job)
            self._cond.notify()

    def withdraw(self, job: Job) -> None:
        """The job's client is gone: cancel it, and take it off the queue if it still waits there (so
        ``queued`` and the queue's room count only requests someone waits for)."""
        job.cancel()
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:  # already taken by the engine thread, or never queued
                pass

    def check_room(self) -> None:
        """ApiError 503 now if ``submit`` would refuse (before a request's images are read)."""
        with self._cond:
            self._check()

    def _check(self) -> None:
        if self.state == "loading":
            raise ApiError(503, "the model is still loading", type="server_error", code="loading",
                           headers={"Retry-After": "2"})
        if self.state != "ready":
            raise ApiError(503, "the server is stopping or its model failed to load", type="server_error",
                           code="unavailable")
        if len(self._waiting) >= self.queue_size:
            raise busy(self.retry_after())

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the queue's work spread over the sequences."""
        return max(1, min(120, round(self._avg_s * (len(self._waiting) + 1) / max(1, self.parallel))))

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"running": len(self._running), "queued": len(self._waiting), "parallel": self.parallel,
                    "queue": self.queue_size}

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs, end the running answers (native work stops at its next check), wait."""
        from ..engine import stop

        self._stopping.set()
        with self._cond:
            self.state = "stopped" if self.state != "failed" else self.state
            self._cond.notify_all()
        if self._running:
            stop.request(signal.SIGTERM)
        self._thread.join(timeout)

    # -- the engine thread -------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            t0 = time.perf_counter()
            engine = self._load()
            self.load_seconds = time.perf_counter() - t0
        except KvlError as exc:
            self._fail_load(exc)
            return
        except Exception as exc:  # a bug: logged with its traceback, the server reports it
            log.exception("loading the model failed")
            self._fail_load(KvlError(f"internal error while loading: {type(exc).__name__}: {exc}"))
            return
        self.engine = engine
        with self._cond:
            if self.state == "loading":
                self.state = "ready"
        log.info("model loaded in %.1f s; ready", self.load_seconds)
        try:
            self._serve(engine)
        finally:
            self._drain()
            engine.close()

    def _fail_load(self, exc: KvlError) -> None:
        with self._cond:
            self.state, self.error = "failed", exc
        log.error("the model did not load: %s", exc)

    def _serve(self, engine: Engine) -> None:
        while not self._stopping.is_set():
            self._count = 0  # generate_many numbers its requests from 0
            try:
                for index, ev in engine.generate_many(self._feed(), self.parallel):
                    self._dispatch(index, ev)
            except KeyboardInterrupt:  # a stop: the running answers were ended as interrupted
                pass
            except Exception:  # a bug: the running requests fail, the server goes on
                log.exception("the engine loop failed")
            for job in self._running.values():  # requests the loop left without an end
                job.send(ApiError(503, "the server is stopping", type="server_error", code="unavailable")
                         if self._stopping.is_set() else internal())
            self._running.clear()

    def _feed(self) -> Iterator[Request | None]:
        while not self._stopping.is_set():
            job = self._next_job()
            if job is not None:
                self._running[self._count] = job
            self._count += 1  # generate_many numbers every item it is given, None included
            yield job.request if job is not None else None

    def _next_job(self) -> Job | None:
        with self._cond:
            if not self._running and not self._waiting:
                self._cond.wait(IDLE_WAIT_S)
            while self._waiting:
                job = self._waiting.popleft()
                if not job.request.cancelled:  # its client left while it waited: nobody to answer
                    return job
        return None

    def _dispatch(self, index: int, ev: AnyEvent) -> None:
        job = self._running.get(index)
        if job is None:
            return
        if isinstance(ev, (DoneEvent, FailedEvent)):
            del self._running[index]
            self._avg_s = 0.8 * self._avg_s + 0.2 * (time.monotonic() - job.started)
        job.send(ev)

    def _drain(self) -> None:
        """Stopping: every job still waiting is told so."""
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for job in waiting:
            job.send(ApiError(503, "the server is shutting down", type="server_error", code="unavailable"))
