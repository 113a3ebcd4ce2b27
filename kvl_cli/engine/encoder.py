"""Image chunk → embeddings: encoded ahead during the load, from the disk cache, or by the vision encoder."""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass

from ..cache import DiskCache
from ..errors import EngineError
from .mtmd_handles import Chunk, Projector
from .prompt import CacheKeys, PreparedPrompt


@dataclass
class Embeddings:
    data: bytes  # float32, n_tokens × n_embd
    seconds: float  # encoder time (0 when it came from the cache)
    from_cache: bool


class EarlyEncodes:
    """Embeddings encoded before the request that needs them runs (during the model load); shared
    by every worker, each entry used once."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, seconds: float) -> None:
        with self._lock:
            self._items[key] = (data, seconds)

    def take(self, key: str) -> tuple[bytes, float] | None:
        with self._lock:
            return self._items.pop(key, None)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class ImageEncoder:
    """One worker's way to embeddings for an image chunk."""

    def __init__(self, projector: Projector, n_embd: int, keys: CacheKeys, cache: DiskCache | None,
                 early: EarlyEncodes) -> None:
        self.projector = projector
        self.n_embd = n_embd
        self.keys = keys
        self.cache = cache if cache is not None and cache.enabled else None
        self.early = early

    def lookup(self, chunk: Chunk) -> Embeddings | None:
        """Embeddings without running the encoder: encoded ahead during the load (that counts as
        encoder work, and goes into the disk cache now), or from the disk cache."""
        n_bytes = chunk.n_tokens * self.n_embd * 4
        key = self.keys.image(chunk) if self.cache is not None or len(self.early) else None
        ahead = self.early.take(key) if key else None
        if ahead is not None and len(ahead[0]) == n_bytes:
            self._store(key, chunk, ahead[0])
            return Embeddings(ahead[0], ahead[1], from_cache=False)
        if self.cache is not None and key:
            hit = self.cache.get("embeddings", key)
            if hit is not None and len(hit[1]) == n_bytes:
                return Embeddings(hit[1], 0.0, from_cache=True)
        return None

    def fresh(self, chunk: Chunk, label: str) -> Embeddings:
        """Run the vision encoder, and keep what it made in the disk cache."""
        t0 = time.perf_counter()
        data = self.encode(chunk, label)
        seconds = time.perf_counter() - t0
        self._store(self.keys.image(chunk) if self.cache is not None else None, chunk, data)
        return Embeddings(data, seconds, from_cache=False)

    def encode(self, chunk: Chunk, label: str = "the image") -> bytes:
        """The vision encoder itself (no cache)."""
        try:
            return self.projector.encode(chunk, self.n_embd)
        except EngineError as exc:
            raise EngineError(f"the vision encoder failed on {label}: {exc.message}") from None

    def _store(self, key: str | None, chunk: Chunk, data: bytes) -> None:
        if self.cache is not None and key:
            self.cache.put("embeddings", key, struct.pack("<ii", chunk.n_tokens, self.n_embd), data)

    def encode_ahead(self, prep: PreparedPrompt) -> int:
        """Encode ``prep``'s images now, for later (see ``Engine``), unless the disk cache holds them
        or the evaluated prompt that contains them. Returns how many were encoded."""
        images = prep.image_chunks
        if not images or (self.cache is not None and self.cache.has("prompts", self.keys.prefix(prep, images[-1]))):
            return 0
        done = 0
        for i in images:
            chunk = prep.segments[i].image
            assert chunk is not None
            key = self.keys.image(chunk)
            if key in self.early or (self.cache is not None and self.cache.has("embeddings", key)):
                continue
            t0 = time.perf_counter()
            self.early.put(key, self.encode(chunk), time.perf_counter() - t0)
            done += 1
        return done
