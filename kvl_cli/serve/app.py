"""The Starlette application: routes, the API key, the body cap, and every error in OpenAI's shape."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..engine.types import FailedEvent
from ..limits import human
from .accesslog import AccessLog
from .errors import ApiError, bad_request, from_kvl, internal, too_large
from .fetch import Fetcher, FetchLimits
from .files import AllowedFolders
from .media import Media
from .protocol import Defaults, parse_chat
from .replies import SSE_DONE, Answer, sse
from .service import Job, Message, Service

log = logging.getLogger("kvl.serve")
PUBLIC = {"/health"}  # answered without the API key (says only whether the model is ready)


@dataclass
class Settings:
    model_name: str
    marker: str
    max_body: int
    api_key: str | None = None
    allow_files: list[Path] = field(default_factory=list)
    fetch: FetchLimits = field(default_factory=FetchLimits)
    defaults: Defaults = field(default_factory=Defaults)
    created: int = 0


class AsciiJSONResponse(JSONResponse):
    """JSON in ASCII: an error message that quotes what a client sent cannot fail to encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(exc: ApiError) -> JSONResponse:
    return AsciiJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


class Guard:
    """The API key (``Authorization: Bearer KEY``), checked before a byte of the body is read."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.api_key and scope["path"] not in PUBLIC:
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            token = given[7:].strip() if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                err = ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                               type="authentication_error", code="invalid_api_key")
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(service: Service, settings: Settings, media: Media | None = None) -> Starlette:
    api = Api(service, settings, media or Media(AllowedFolders(settings.allow_files), Fetcher(settings.fetch)))
    routes = [Route("/health", api.health, methods=["GET"]), Route("/v1/models", api.models, methods=["GET"]),
              Route("/v1/chat/completions", api.chat, methods=["POST"])]
    handlers: dict[Any, Any] = {ApiError: api.on_api_error, HTTPException: api.on_http_error,
                                Disconnected: api.on_disconnect, Exception: api.on_crash}
    middleware = [Middleware(AccessLog), Middleware(Guard, api_key=settings.api_key)]
    return Starlette(routes=routes, exception_handlers=handlers, middleware=middleware)


class Api:
    def __init__(self, service: Service, settings: Settings, media: Media) -> None:
        self.service = service
        self.settings = settings
        self.media = media

    async def health(self, request: Request) -> Response:
        state = self.service.state
        body: dict[str, Any] = {"status": "ok" if state == "ready" else state, "model": self.settings.model_name}
        if state == "ready":
            body.update(self.service.stats())
        elif self.service.error is not None:
            body["error"] = str(self.service.error)
        return JSONResponse(body, status_code=200 if state == "ready" else 503)

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.settings.model_name, "object": "model",
                                                         "created": self.settings.created, "owned_by": "kvl"}]})

    async def chat(self, request: Request) -> Response:
        call = parse_chat(await read_json(request, self.settings.max_body), self.settings.defaults)
        self.service.check_room()  # a full queue is refused before the images are read
        req = await until_disconnect(request, self.media.build_request(call, self.settings.marker))
        job = Job(req, asyncio.get_running_loop())
        self.service.submit(job)
        answer = Answer(self.settings.model_name, call.stop, call.progress)
        try:
            first = await until_disconnect(request, job.events.get())
            payloads = answer_payloads(first, job, answer)
        except BaseException:
            self.service.withdraw(job)  # a client gone while it waited leaves the queue now
            raise
        if call.stream:
            return StreamingResponse(stream(job, answer, payloads, call.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            await until_disconnect(request, drain(job, answer, payloads))
        finally:
            job.cancel()  # a no-op once the answer is done
        return JSONResponse(answer.completion())

    async def on_api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        err = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", type=kind)
        return error_response(err)

    async def on_disconnect(self, request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": for the log, nobody reads it

    async def on_crash(self, request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(internal())


async def read_json(request: Request, cap: int) -> Any:
    """The body as JSON: refused with 413 from its Content-Length, or as soon as it passes ``cap``;
    400 if it is not JSON, is nested too deep, or holds a string that is not Unicode (a lone
    surrogate); Disconnected if the client hangs up while sending it."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise too_large(f"the request body ({human(int(length))}) is over the server's limit of {human(cap)}")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                raise too_large(f"the request body is over the server's limit of {human(cap)}")
    except ClientDisconnect:
        raise Disconnected() from None
    try:
        value = json.loads(body, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not JSON ({exc})") from None
    except RecursionError:
        raise bad_request("the request body is nested too deep") from None
    check_strings(value)
    return value


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def check_strings(value: Any) -> None:
    """400 if a string or key anywhere in ``value`` is not Unicode text (JSON lets ``\\ud800`` through)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += item.keys()
            stack += item.values()
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise bad_request("the request body holds a string that is not Unicode text (a lone surrogate "
                                  "escape such as \\ud800)") from None


class Disconnected(Exception):
    """The client went away before its answer was complete."""


async def until_disconnect(request: Request, work: Any) -> Any:
    """``await work``, unless the client disconnects first (then Disconnected, the work cancelled)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if task not in done:
        task.cancel()
        task.add_done_callback(_retrieve)  # whatever it ends with, nobody waits for it now
        raise Disconnected()
    return task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def answer_payloads(first: Message, job: Job, answer: Answer) -> list[dict[str, Any]]:
    """The first event's payloads; its failure as an HTTP error (the status is not sent yet)."""
    if isinstance(first, ApiError):
        raise first
    if isinstance(first, FailedEvent):
        raise from_kvl(first.error)
    return answer.deltas(first)


async def events(job: Job, answer: Answer, payloads: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """The answer's chunk payloads, from the first event's to the end of the answer."""
    while True:
        for p in payloads:
            yield p
        if answer.stopped:
            job.cancel()  # a stop string: the sequence ends at its next step
        if answer.result is not None:
            return
        msg = await job.events.get()
        payloads = answer_payloads(msg, job, answer)


async def drain(job: Job, answer: Answer, payloads: list[dict[str, Any]]) -> None:
    async for _ in events(job, answer, payloads):
        pass


async def stream(job: Job, answer: Answer, payloads: list[dict[str, Any]], include_usage: bool) -> AsyncIterator[bytes]:
    """The server-sent events; a client that goes away cancels the sequence (Starlette cancels this
    generator when it sees the disconnect)."""
    try:
        yield sse(answer.first_chunk())
        async for payload in events(job, answer, payloads):
            yield sse(answer.chunk(payload))
        for chunk in answer.last_chunks(include_usage):
            yield sse(chunk)
    except ApiError as exc:  # after the status went out: the error as an event, as OpenAI's stream does
        yield sse(exc.body())
    finally:
        job.cancel()
    yield SSE_DONE
