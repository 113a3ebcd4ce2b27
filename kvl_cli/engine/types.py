"""What goes into the engine and what comes out of it: configuration, requests, events, results.

No native import here: media, rendering and options import only this module, so they stay
usable (and ``kvl --help`` stays fast) without loading llama.cpp.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import KvlError
from .reasoning import Section

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant"


@dataclass
class EngineConfig:
    model: Path
    mmproj: Path
    n_ctx: int = 16384  # context per sequence (prompt + images + answer)
    n_batch: int = 2048
    n_ubatch: int = 512
    n_threads: int | None = None  # None: physical cores
    n_gpu_layers: int = -1  # -1: all layers when a GPU backend exists
    image_min_tokens: int | None = None  # None: libmtmd's default for the projector (8)
    image_max_tokens: int | None = None  # None: libmtmd's default for the projector (1024)
    repack: bool = False  # llama.cpp's extra CPU buffer types; abort on this graph (see README)
    parallel: int = 1  # sequences generated together in one context (batches), each with its own n_ctx cells
    lanes: int = 1  # workers on a CPU: each its own context and projector, n_threads / lanes threads
    verbose: bool = False


@dataclass
class ImageInput:
    """Decoded RGB pixels plus a stable id (content hash) used for caching."""

    rgb: bytes
    width: int
    height: int
    id: str
    label: str = ""
    # the image as a person sees it (EXIF orientation applied) before kvl scaled it to the token budget;
    # None: these pixels are the source (a video frame). ``kvl locate`` maps its boxes back to it.
    source_size: tuple[int, int] | None = None


class ConstraintKind(str, enum.Enum):
    JSON_SCHEMA = "json_schema"  # a JSON Schema (as JSON text): the answer is a JSON document that follows it
    GRAMMAR = "grammar"  # a GBNF or Lark grammar (``kvl serve``'s ``kvl.grammar``)


@dataclass(frozen=True)
class Constraint:
    """What the answer after the thinking must follow; compiled by llguidance (``engine.constraint``)."""

    kind: ConstraintKind
    text: str


@dataclass
class GenerationSettings:
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 4096
    think_budget: int | None = None  # None: unlimited; 0 = no thinking at all
    constraint: Constraint | None = None  # what the answer must follow (the thinking before it is free)


@dataclass
class Request:
    """One answer to make. A source of requests (``Engine.generate_many``) may also yield ``None``:
    nothing new to start now (a server's empty queue); the running answers go on and the source is
    asked again after their next step."""

    user_text: str  # with one media marker (``Engine.marker``) per image, in order
    images: list[ImageInput] = field(default_factory=list)  # every image of ``messages`` and ``user_text``, in order
    system: str | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    # earlier turns of a conversation, before ``user_text``: (role "user" or "assistant", text with markers)
    messages: list[tuple[str, str]] = field(default_factory=list)
    # set from any thread to end the answer early: at the scheduler's next step it ends as CANCELLED
    # (after the image being encoded, during the prompt) and its sequence is free for the next request
    cancel: threading.Event | None = None
    # keep the answer's cells after it (not only the prompt's): the next turn of a chat repeats the
    # answer after this prompt and evaluates only what is new (its thinking left out, the rest moved)
    keep_answer: bool = False

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


class Phase(str, enum.Enum):
    """The stage of work a request is in (what a progress line says)."""

    LOAD = "load"
    ENCODE = "encode"
    PREFILL = "prefill"
    GENERATE = "generate"


class FinishReason(str, enum.Enum):
    STOP = "stop"  # the model ended its answer
    LENGTH = "length"  # --max-tokens reached
    CONTEXT = "context"  # the context window is full
    INTERRUPTED = "interrupted"  # Ctrl-C: what was generated is kept
    CANCELLED = "cancelled"  # the request's ``cancel`` was set (a client went away): what was generated is kept


@dataclass
class Tokens:
    prompt: int = 0
    image: int = 0
    thinking: int = 0
    answer: int = 0
    generated: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Timings:
    encode_s: float = 0.0
    prefill_s: float = 0.0
    generate_s: float = 0.0
    cache_s: float = 0.0  # reading and writing the disk cache (prompt state restore and save)
    think_s: float | None = None  # how long the model thought (None: it did not)

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items() if v is not None}


@dataclass
class CacheStats:
    images: int = 0  # encodes skipped: embeddings from the disk cache
    prefix_tokens: int = 0  # prompt tokens not evaluated again (in the KV cache or restored from disk)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Result:
    answer: str
    thinking: str
    finish_reason: FinishReason
    tokens: Tokens
    timings: Timings
    image_tokens: list[int]
    think_budget_hit: bool = False
    cached: CacheStats = field(default_factory=CacheStats)

    @property
    def interrupted(self) -> bool:
        return self.finish_reason is FinishReason.INTERRUPTED


# ---- events ---------------------------------------------------------------------------------


@dataclass
class PhaseEvent:
    phase: Phase
    index: int = 0  # the image being worked on (encode, prefill), 1-based
    total: int = 0  # images in the request


@dataclass
class TextEvent:
    section: Section  # THINKING or ANSWER
    text: str


@dataclass
class DoneEvent:
    result: Result


@dataclass
class FailedEvent:
    """From ``generate_many`` only: this request failed; the others go on."""

    error: KvlError


Event = PhaseEvent | TextEvent | DoneEvent
AnyEvent = Event | FailedEvent
Tagged = tuple[int, AnyEvent]  # (the request's index in its run, one of its events)


class Answerer(Protocol):
    """What a run needs of an engine: the loaded ``Engine``, or a running ``kvl serve`` answering
    for it (``serve.client.RemoteEngine``). The runner, the video workflow, the library face and the
    Ray workers take this, not a class."""

    warnings: list[str]
    load_seconds: float

    @property
    def marker(self) -> str:
        """The placeholder that marks where an image goes in ``Request.user_text``."""

    def generate_many(self, requests: Iterable[Request | None], parallel: int | None = None) -> Iterator[Tagged]:
        """Run requests, several at once; ``(index, event)`` pairs, a failure as ``FailedEvent``."""

    def close(self) -> None:
        """Free what the engine holds."""
