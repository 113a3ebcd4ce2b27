"""Engine events into OpenAI's answer objects: a whole ``chat.completion``, or ``chat.completion.chunk``
server-sent events (thinking in ``reasoning_content`` deltas, the answer in ``content``), usage with
image and thinking tokens, and kvl's own account of the answer under ``kvl``."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ..engine.reasoning import Section
from ..engine.types import DoneEvent, FinishReason, PhaseEvent, Result, TextEvent

FINISH = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length", FinishReason.CONTEXT: "length",
          FinishReason.INTERRUPTED: "stop", FinishReason.CANCELLED: "stop"}


def usage(result: Result) -> dict[str, Any]:
    t = result.tokens
    return {"prompt_tokens": t.prompt, "completion_tokens": t.generated, "total_tokens": t.prompt + t.generated,
            "prompt_tokens_details": {"cached_tokens": result.cached.prefix_tokens, "image_tokens": t.image},
            "completion_tokens_details": {"reasoning_tokens": t.thinking}}


def kvl_result(result: Result, stopped: bool) -> dict[str, Any]:
    """What the CLI's --json record says about an answer (the client rebuilds its ``Result`` from it)."""
    return {"finish_reason": "stop" if stopped else result.finish_reason.value, "tokens": result.tokens.to_dict(),
            "timings": result.timings.to_dict(), "image_tokens": result.image_tokens,
            "cached": result.cached.to_dict(), "think_budget_hit": result.think_budget_hit}


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class StopMatcher:
    """``stop`` strings in the answer: text that could still start one is held back until it can't."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.held = ""
        self.hit = False

    def feed(self, text: str) -> str:
        """What can go out now; after a stop string, nothing more (``hit``)."""
        if not self.stops or self.hit:
            return "" if self.hit else text
        buf = self.held + text
        found = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit, self.held = True, ""
            return buf[:min(found)]
        keep = max((n for s in self.stops for n in range(min(len(s) - 1, len(buf)), 0, -1)
                    if buf.endswith(s[:n])), default=0)
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return "" if self.hit else out


class Answer:
    """One request's answer as it streams: deltas out, text and result kept for the final object."""

    def __init__(self, model: str, stops: list[str], progress: bool = False) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model
        self.stop = StopMatcher(stops)
        self.progress = progress
        self.thinking = ""
        self.content = ""
        self.result: Result | None = None

    @property
    def stopped(self) -> bool:
        """A stop string ended the answer (the engine's sequence is cancelled)."""
        return self.stop.hit

    def deltas(self, ev: object) -> list[dict[str, Any]]:
        """The chunk payloads (``delta`` or ``kvl``) one engine event gives."""
        if isinstance(ev, TextEvent):
            if ev.section is Section.THINKING:
                self.thinking += ev.text
                return [{"delta": {"reasoning_content": ev.text}}]
            return self._content(self.stop.feed(ev.text))
        if isinstance(ev, PhaseEvent):
            return [{"kvl": {"phase": ev.phase.value, "index": ev.index, "total": ev.total}}] if self.progress else []
        if isinstance(ev, DoneEvent):
            self.result = ev.result
            return self._content(self.stop.flush())
        return []

    def _content(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        self.content += text
        return [{"delta": {"content": text}}]

    def finish_reason(self) -> str:
        assert self.result is not None
        return "stop" if self.stopped else FINISH[self.result.finish_reason]

    def chunk(self, payload: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model, "choices": []}
        if "delta" in payload or finish is not None:
            body["choices"] = [{"index": 0, "delta": payload.get("delta", {}), "logprobs": None,
                                "finish_reason": finish}]
        body.update({k: v for k, v in payload.items() if k != "delta"})
        return body

    def first_chunk(self) -> dict[str, Any]:
        return self.chunk({"delta": {"role": "assistant", "content": ""}})

    def last_chunks(self, include_usage: bool) -> list[dict[str, Any]]:
        assert self.result is not None
        chunks = [self.chunk({"kvl": kvl_result(self.result, self.stopped)}, finish=self.finish_reason())]
        if include_usage:
            chunks.append(self.chunk({"usage": usage(self.result)}))
        return chunks

    def completion(self) -> dict[str, Any]:
        assert self.result is not None
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.thinking:
            message["reasoning_content"] = self.thinking
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": self.finish_reason()}],
                "usage": usage(self.result), "kvl": kvl_result(self.result, self.stopped)}
