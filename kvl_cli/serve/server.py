"""Run the server: bind, load the model on the engine thread, serve under uvicorn, record it, stop cleanly.

The socket is bound before anything loads (a port in use fails at once), ``/health`` answers
"loading" until the model is in, and the record in the runtime folder is written once the server
listens. SIGINT or SIGTERM (``kvl serve --stop``) first abandons the image fetches in flight and
ends the engine's work (their requests and the queued ones get 503 ``unavailable``; running answers
end as interrupted and their streams close), then uvicorn closes the connections (a few seconds at
most), then the record goes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import uvicorn

from ..engine.engine import Engine
from ..engine.types import EngineConfig
from ..errors import ExitCode, UsageError
from ..run.runner import open_cache
from . import record
from .app import Settings, create_app
from .fetch import Fetcher, FetchLimits
from .files import AllowedFolders
from .media import Media
from .protocol import Defaults
from .service import Service

log = logging.getLogger("kvl.serve")
GRACE_S = 3  # after the engine and the fetches are stopped, how long answers in flight get to finish


@dataclass
class ServeConfig:
    engine: EngineConfig
    model_name: str
    host: str = "127.0.0.1"
    port: int = 8411
    api_key: str | None = None
    allow_files: list[Path] = field(default_factory=list)
    parallel: int = 1
    queue: int = 64
    max_body: int = 0
    cache: bool = True
    defaults: Defaults = field(default_factory=Defaults)
    fetch: FetchLimits = field(default_factory=FetchLimits)


class _Server(uvicorn.Server):
    """uvicorn's server, which stops the engine first and exits on a failed load."""

    def __init__(self, config: uvicorn.Config, service: Service, media: Media,
                 on_stop: list[record.ServerRecord]) -> None:
        super().__init__(config)
        self.service = service
        self.media = media
        self.records = on_stop

    async def on_tick(self, counter: int) -> bool:
        if self.service.state == "failed":
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("stopping")
        self.media.fetcher.close()  # fetches in flight end now; their clients get 503
        await _on_own_thread(self.service.stop)  # not the shared executor, whatever waits there
        await super().shutdown(sockets)
        self.media.files.close()
        for rec in self.records:
            record.remove(rec)
        self._captured_signals.clear()  # a stop by signal is a clean exit, not a re-raised signal


async def _on_own_thread(work: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def run() -> None:
        try:
            work()
        finally:
            loop.call_soon_threadsafe(done.set)

    threading.Thread(target=run, name="kvl-stop", daemon=True).start()
    await done.wait()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                         hint="another server may use that port: pick another with --port (0: any free port)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def setup_logging(err: IO[str], verbose: bool) -> None:
    for name, fmt in (("kvl.serve", "kvl serve: %(message)s"), ("kvl.serve.access", "%(message)s")):
        logger = logging.getLogger(name)
        logger.handlers = []
        handler = logging.StreamHandler(err)
        handler.setFormatter(logging.Formatter(fmt))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = False


def run(cfg: ServeConfig, err: IO[str] | None = None) -> int:
    """Serve until stopped; the exit code (the load's, if the model did not load)."""
    err = err or sys.stderr
    sock = bind(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    service = Service(lambda: Engine(cfg.engine, cache=open_cache(cfg.cache)), parallel=cfg.parallel,
                      queue_size=cfg.queue)
    from ..engine.mtmd_handles import default_marker

    settings = Settings(model_name=cfg.model_name, marker=default_marker(), max_body=cfg.max_body, api_key=cfg.api_key,
                        allow_files=cfg.allow_files, fetch=cfg.fetch, defaults=cfg.defaults, created=int(time.time()))
    media = Media(AllowedFolders(cfg.allow_files), Fetcher(cfg.fetch), ctx=cfg.engine.n_ctx)
    config = uvicorn.Config(create_app(service, settings, media), log_config=None, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=GRACE_S, log_level="warning")
    rec = record.ServerRecord(pid=os.getpid(), host=cfg.host, port=port, model=str(cfg.engine.model.resolve()),
                              mmproj=str(cfg.engine.mmproj.resolve()), identity=_identity(cfg.engine),
                              model_name=cfg.model_name, image_max_tokens=cfg.defaults.image_max_tokens,
                              api_key=cfg.api_key, started=time.time())
    server = _Server(config, service, media, [rec])
    service.start()
    record.write(rec)
    log.info("listening on %s (model %s, %d sequence(s), queue %d, image URLs: %s); loading the model", rec.url,
             cfg.model_name, cfg.parallel, cfg.queue, cfg.fetch.policy.value)
    try:
        server.run(sockets=[sock])
    finally:
        service.stop()
        record.remove(rec)
    if service.error is not None:
        err.write(f"kvl: error: {service.error}\n")
        return int(service.error.exit_code)
    return int(ExitCode.OK)


def _identity(engine: EngineConfig) -> list[str]:
    from ..cache import file_identity

    return [file_identity(engine.model), file_identity(engine.mmproj)]
