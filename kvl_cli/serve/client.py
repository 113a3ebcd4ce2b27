"""The CLI's side: caption, ocr and ask answered by a running ``kvl serve`` of the same model.

``find_server`` looks in the runtime folder for a live, ready server that loaded the same model
files (path, size, mtime) with an image budget at least the task's. ``RemoteEngine`` then stands in
for ``Engine`` (``marker``, ``load_seconds``, ``generate_many``): each request goes out as one
streamed chat completion (its images as PNG data URIs of the pixels the CLI decoded, so the server's
cache keys are the CLI's), and the server's chunks come back as the engine's own events (phases,
thinking, answer, and a ``Result`` rebuilt from the ``kvl`` account), so rendering, ``--json``,
``--schema`` and input order work as in-process. Standard library only (and Pillow, to write PNGs).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..engine.reasoning import Section
from ..engine.types import (
    Answerer,
    AnyEvent,
    CacheStats,
    ConstraintKind,
    DoneEvent,
    EngineConfig,
    FailedEvent,
    FinishReason,
    ImageInput,
    Phase,
    PhaseEvent,
    Request,
    Result,
    Tagged,
    TextEvent,
    Timings,
    Tokens,
)
from ..errors import EngineError, KvlError
from . import record
from .errors import to_kvl

MARKER = "<__media__>"  # libmtmd's placeholder; any string works: the request is rebuilt from parts


def find_server(config: EngineConfig) -> record.ServerRecord | None:
    """A ready server of ``config``'s model pair whose image budget covers the task's."""
    want = config.image_max_tokens or 1024
    for rec in record.running():
        if rec.serves(config.model, config.mmproj) and want <= rec.image_max_tokens:
            health = record.health(rec, timeout=2.0)
            if health is not None and health.get("status") == "ok":
                return rec
    return None


class RemoteEngine:
    """``Engine``'s face over a running server."""

    load_seconds = 0.0

    def __init__(self, rec: record.ServerRecord, image_max_tokens: int) -> None:
        self.rec = rec
        self.image_max_tokens = image_max_tokens
        self.warnings: list[str] = []
        self.marker = MARKER

    def close(self) -> None:
        """Nothing to free here: the server keeps its model."""

    def generate_many(self, requests: Iterable[Request | None], parallel: int | None = None) -> Iterator[Tagged]:
        """Up to ``parallel`` requests in flight, each on its own connection; Ctrl-C closes them (the
        server frees their sequences)."""
        out: queue.Queue[Tagged] = queue.Queue()
        calls: dict[int, Call] = {}
        source = iter(requests)
        exhausted, index = False, 0
        try:
            while True:
                while not exhausted and len(calls) < max(1, parallel or 1):
                    req = next(source, None)
                    exhausted = req is None
                    if req is not None:
                        calls[index] = Call(self, index, req, out)
                        index += 1
                if not calls:
                    return
                i, ev = out.get()
                if isinstance(ev, (DoneEvent, FailedEvent)):
                    calls.pop(i, None)
                yield i, ev
        finally:
            for call in calls.values():
                call.close()

    def body(self, req: Request) -> dict[str, Any]:
        s = req.settings
        messages: list[dict[str, Any]] = [] if req.system is None else [{"role": "system", "content": req.system}]
        texts = [text for _, text in req.messages] + [req.user_text]
        images = iter(req.images)
        for (role, _), text in zip([*req.messages, ("user", "")], texts, strict=True):
            messages.append({"role": role, "content": _parts(text, images) if role == "user" else text})
        c = s.constraint
        ext = {"think_budget": s.think_budget, "top_k": s.top_k, "min_p": s.min_p,
               "grammar": c.text if c is not None and c.kind is ConstraintKind.GRAMMAR else None,
               "image_max_tokens": self.image_max_tokens, "progress": True}
        body = {"model": self.rec.model_name, "messages": messages, "stream": True, "max_tokens": s.max_tokens,
                "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed,
                "kvl": {k: v for k, v in ext.items() if v is not None or k == "think_budget"}}
        if c is not None and c.kind is ConstraintKind.JSON_SCHEMA:  # the schema goes as OpenAI's response_format
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": json.loads(c.text)}}
        return body


def _parts(text: str, images: Iterator[ImageInput]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    pieces = text.split(MARKER)
    for k, piece in enumerate(pieces):
        if piece:
            parts.append({"type": "text", "text": piece})
        if k < len(pieces) - 1:
            parts.append({"type": "image_url", "image_url": {"url": data_uri(next(images))}})
    return parts


def data_uri(image: ImageInput) -> str:
    """The decoded pixels as a PNG (lossless: the server decodes the very same pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (image.width, image.height), image.rgb).save(buf, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Call:
    """One request on its own connection and thread; its events go to the shared queue."""

    def __init__(self, engine: RemoteEngine, index: int, req: Request, out: queue.Queue[Tagged]) -> None:
        self.index = index
        self.out = out
        self.rec = engine.rec
        self.body = json.dumps(engine.body(req)).encode("utf-8")
        self.conn = http.client.HTTPConnection(self.rec.connect_host, self.rec.port)
        self.closed = False
        threading.Thread(target=self._run, name=f"kvl-remote-{index}", daemon=True).start()

    def _run(self) -> None:
        try:
            headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
            if self.rec.api_key:
                headers["Authorization"] = f"Bearer {self.rec.api_key}"
            self.conn.request("POST", "/v1/chat/completions", body=self.body, headers=headers)
            resp = self.conn.getresponse()
            if resp.status != 200:
                self._send(FailedEvent(to_kvl(resp.status, _json(resp.read()))))
                return
            for ev in ChunkReader().events(resp):
                self._send(ev)
        except KvlError as exc:  # an error event in the stream, or a stream cut short
            self._send(FailedEvent(exc))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if not self.closed:
                self._send(FailedEvent(EngineError(f"kvl serve at {self.rec.url}: the connection failed ({exc})",
                                                   hint="is the server still running? --no-server runs in-process")))
        finally:
            self.conn.close()

    def _send(self, ev: AnyEvent) -> None:
        if not self.closed:
            self.out.put((self.index, ev))

    def close(self) -> None:
        """Hang up: the server cancels the answer and frees its sequence."""
        self.closed = True
        try:
            if self.conn.sock is not None:
                self.conn.sock.shutdown(2)
        except OSError:
            pass


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


class ChunkReader:
    """Server-sent chunks back into engine events."""

    def __init__(self) -> None:
        self.thinking = ""
        self.answer = ""
        self.account: dict[str, Any] | None = None

    def events(self, resp: http.client.HTTPResponse) -> Iterator[AnyEvent]:
        for line in resp:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                yield self.done()
                return
            yield from self.chunk(json.loads(data))
        raise EngineError("kvl serve ended the answer early", hint="see the server's log")

    def chunk(self, obj: dict[str, Any]) -> Iterator[AnyEvent]:
        if "error" in obj:
            raise to_kvl(200, obj)
        ext = obj.get("kvl") or {}
        if "phase" in ext:
            yield PhaseEvent(Phase(ext["phase"]), int(ext.get("index", 0)), int(ext.get("total", 0)))
        if "tokens" in ext:
            self.account = ext
        for choice in obj.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                self.thinking += delta["reasoning_content"]
                yield TextEvent(Section.THINKING, delta["reasoning_content"])
            if delta.get("content"):
                self.answer += delta["content"]
                yield TextEvent(Section.ANSWER, delta["content"])

    def done(self) -> AnyEvent:
        a = self.account
        if a is None:
            return FailedEvent(EngineError("kvl serve sent no account of the answer", hint="update kvl"))
        return DoneEvent(Result(
            answer=self.answer, thinking=self.thinking, finish_reason=FinishReason(a["finish_reason"]),
            tokens=Tokens(**a["tokens"]), timings=Timings(**a["timings"]), image_tokens=list(a["image_tokens"]),
            think_budget_hit=bool(a["think_budget_hit"]), cached=CacheStats(**a["cached"])))


def remote_engine(config: EngineConfig, meta: dict[str, Any]) -> Callable[[Request | None], Answerer] | None:
    """The run's engine factory when a server can answer for ``config`` (``meta`` then names it)."""
    rec = find_server(config)
    if rec is None:
        return None
    meta["server"] = rec.url
    engine = RemoteEngine(rec, config.image_max_tokens or 1024)
    return lambda first: engine
