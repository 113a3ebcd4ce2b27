"""The engine's public face: load the pair once, then answer requests as streams of events.

One ``Engine`` loads the text model and its projector once and serves many requests. A request
is a system prompt, a user text with one media marker per image, the images and the generation
settings; ``generate`` yields events: phases with progress, thinking and answer deltas, and a
final ``DoneEvent``. The stages of the pass live in modules named after them: ``loader``,
``prompt``, ``encoder``, ``prefill``, ``sequence`` (sampling, the thinking budget, the result),
``scheduler`` (batching on one context) and ``workers`` (several contexts on a CPU).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..cache import DiskCache
from ..errors import ModelError
from . import loader, stop
from .encoder import EarlyEncodes, ImageEncoder
from .gguf_info import read_gguf_info
from .llama_handles import Model
from .mtmd_handles import Projector, default_marker
from .prompt import CacheKeys, prepare
from .types import EngineConfig, Event, FailedEvent, ImageInput, Request, Tagged
from .workers import ThreadBudget, Worker, WorkerPool

KIMI_ARCH = "deepseek2"
KIMI_PROJECTOR = "kimivl"


class Engine:
    """Text model + projector, loaded once. One call at a time (a batch runs its workers itself)."""

    def __init__(self, config: EngineConfig, cache: DiskCache | None = None, *,
                 encode_ahead: Request | None = None) -> None:
        """Load the pair. ``encode_ahead``: the first request, whose images are encoded while the text
        model is still loading (CPU builds, one worker): on a cold start the encoder's seconds hide
        behind the disk."""
        self.config = config
        self.cache = cache if cache is not None and cache.enabled else None
        self.warnings = check_model_pair(config.model, config.mmproj)
        self.keys = CacheKeys(config)
        self._early = EarlyEncodes()
        t0 = time.perf_counter()
        early = self._early_work(encode_ahead) if encode_ahead is not None and encode_ahead.images else None
        self._loaded = loader.load(config, early)
        model = self._loaded.model
        self.threads, self.gpu = self._loaded.threads, self._loaded.gpu
        self.n_embd, self.n_ctx_train = model.n_embd, model.n_ctx_train
        self.budget = ThreadBudget(self.threads * len(self._loaded.contexts))
        self.workers = [Worker(model, ctx, proj, config=config, n_embd=self.n_embd, keys=self.keys, cache=self.cache,
                               early=self._early, budget=self.budget)
                        for ctx, proj in zip(self._loaded.contexts, self._loaded.projectors, strict=True)]
        self.n_ctx = self._loaded.contexts[0].n_ctx  # per sequence
        self.n_seq = self._loaded.contexts[0].n_seq  # per worker
        self.load_seconds = time.perf_counter() - t0

    def _early_work(self, request: Request) -> loader.EarlyWork:
        def work(projector: Projector, vocab: Model, n_embd: int) -> None:
            prep = prepare(request, vocab, projector)
            try:
                ImageEncoder(projector, n_embd, self.keys, self.cache, self._early).encode_ahead(prep)
            finally:
                prep.close()
        return work

    @property
    def marker(self) -> str:
        """The placeholder that marks where an image goes in ``Request.user_text``."""
        return default_marker()

    @property
    def encoded_ahead(self) -> int:
        """Images encoded during the load and not yet used by a request."""
        return len(self._early)

    def generate(self, request: Request) -> Iterator[Event]:
        """Run one request; yields PhaseEvent/TextEvent and finally DoneEvent; errors raise.

        Ctrl-C (KeyboardInterrupt) during generation ends the request with
        ``finish_reason=INTERRUPTED``: the DoneEvent still arrives with what was generated.
        """
        for _, ev in self.generate_many([request]):
            if isinstance(ev, FailedEvent):
                raise ev.error
            yield ev

    def generate_many(self, requests: Iterable[Request | None], parallel: int | None = None) -> Iterator[Tagged]:
        """Run requests, up to ``parallel`` at once (default: every sequence of every worker).

        Yields ``(index, event)``; a request that fails yields ``FailedEvent`` and the others go on.
        Requests are pulled from ``requests`` on the calling thread, only when a sequence is free (a
        ``None``: nothing to start now, asked again after the next step; see ``Request``).
        With one sequence per worker and one worker, each answer streams as it is made.
        """
        stop.reset()  # a stop asked for an earlier run (a library caller's Ctrl-C) does not stop this one
        total = parallel or self.n_seq * len(self.workers)
        if len(self.workers) == 1 or total <= 1:
            self.budget.begin(1)  # the other workers are idle: this one's decodes take every core
            yield from self.workers[0].run(enumerate(requests), min(total, self.n_seq))
            return
        workers = self.workers[:min(len(self.workers), total)]
        per_worker = max(1, min(self.n_seq, -(-total // len(workers))))
        yield from WorkerPool(workers, self.budget).run(iter(enumerate(requests)), per_worker)

    def encode_image(self, image: ImageInput) -> tuple[int, float]:
        """The vision tower alone on one image, no cache: (image tokens, seconds)."""
        worker = self.workers[0]
        chunks = worker.projector.tokenize(self.marker, [image])
        with chunks:
            chunk = next(c for c in chunks if c.is_image)
            t0 = time.perf_counter()
            worker.encoder.encode(chunk)
            return chunk.n_tokens, time.perf_counter() - t0

    def close(self) -> None:
        """Free the contexts, projectors and the model."""
        self.workers = []
        self._loaded.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_model_pair(model: Path, mmproj: Path) -> list[str]:
    """Validate the pair from their headers (milliseconds); return warnings, raise ModelError."""
    warnings: list[str] = []
    text = read_gguf_info(model)
    if text.is_projector:
        raise ModelError(f"{model} is a vision projector, not a text model",
                         hint="pass it as --mmproj and give the text model with --model")
    proj = read_gguf_info(mmproj)
    if not proj.is_projector:
        raise ModelError(f"{mmproj} is not a vision projector (architecture {proj.architecture or 'unknown'})",
                         hint="pass the mmproj-*.gguf file that belongs to the model as --mmproj")
    if text.architecture != KIMI_ARCH:
        warnings.append(f"{model.name} is a '{text.architecture}' model, not Kimi-VL ({KIMI_ARCH}); "
                        "prompts may not fit it")
    if proj.projector_type and proj.projector_type != KIMI_PROJECTOR:
        warnings.append(f"{mmproj.name} is a '{proj.projector_type}' projector, not Kimi-VL's ({KIMI_PROJECTOR})")
    n_text, n_proj = text.text_embedding_length, proj.projection_dim
    if n_text and n_proj and n_text != n_proj:
        raise ModelError(
            f"the projector {mmproj.name} does not fit the model {model.name} "
            f"(it produces {n_proj}-wide embeddings, the model takes {n_text})",
            hint="use the mmproj file from the same repository as the model",
        )
    return warnings
