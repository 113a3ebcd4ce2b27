"""Prompt prefixes already evaluated: reused from the context's KV cells, or restored from disk.

Each sequence remembers the chunk keys of the prompt its cells hold. A new request reuses the
longest run of leading chunks some sequence holds (the system prompt of every request in a
batch; the image of a repeated question). Evaluated prefixes up to the last image are also
saved to the disk cache and restored by a later process.
"""

from __future__ import annotations

import struct

from ..cache import DiskCache
from .llama_handles import Context
from .prompt import CacheKeys, PreparedPrompt


class ResidentPrefixes:
    """What each sequence of one context holds, and reuse of it by another request."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._held: dict[int, list[str]] = {}  # seq id -> chunk keys of the prompt in its cells

    def reuse(self, prep: PreparedPrompt, seq_id: int) -> int:
        """Make ``seq_id`` hold the longest run of ``prep``'s leading chunks that any sequence holds,
        and nothing else. Returns the number of chunks reused."""
        best_seq, best = seq_id, 0
        for other, keys in self._held.items():
            n = 0
            # the last chunk is always evaluated: its last token's logits start the answer
            while n < min(len(keys), prep.n_chunks - 1) and keys[n] == prep.keys[n]:
                n += 1
            if n > best or (n == best and other == seq_id):
                best_seq, best = other, n
        if best == 0:
            self.forget(seq_id)
            return 0
        if best_seq != seq_id:
            # sequences live in separate streams: llama.cpp copies a whole stream (a buffer copy at the
            # next decode), then the copy is cut back to the shared part
            self.ctx.seq_rm(seq_id)
            self.ctx.seq_cp(best_seq, seq_id)
        self.ctx.seq_rm(seq_id, prep.ends[best - 1], -1)
        return best

    def changing(self, seq_id: int) -> None:
        """``seq_id``'s cells are about to change: what it held no longer counts."""
        self._held.pop(seq_id, None)

    def holds(self, seq_id: int, prep: PreparedPrompt) -> None:
        self._held[seq_id] = list(prep.keys)

    def keep_prompt(self, seq_id: int, n_prompt: int) -> None:
        """Drop the generated cells; the prompt's stay for a later request sharing its start."""
        self.ctx.seq_rm(seq_id, n_prompt, -1)

    def forget(self, seq_id: int) -> None:
        """Empty a sequence's cells."""
        self.ctx.seq_rm(seq_id)
        self._held.pop(seq_id, None)


class SavedPrefixes:
    """Evaluated prompt prefixes in the disk cache, in one-stream form (see ``one_stream``)."""

    def __init__(self, ctx: Context, cache: DiskCache, keys: CacheKeys) -> None:
        self.ctx = ctx
        self.cache = cache
        self.keys = keys

    def restore(self, key: str, seq_id: int) -> int | None:
        """Load a saved prefix into ``seq_id``; its n_past, or None (a miss leaves the sequence empty)."""
        hit = self.cache.get("prompts", key)
        if hit is None:
            return None
        meta, payload = hit
        (n_past,) = struct.unpack("<i", meta[:4])
        if not self.ctx.set_seq_state(seq_id, for_stream(payload, self.ctx.n_seq, seq_id)):
            self.ctx.seq_rm(seq_id)
            return None
        return int(n_past)

    def save(self, key: str, seq_id: int, n_past: int) -> None:
        state = self.ctx.seq_state(seq_id)
        blob = one_stream(state, self.ctx.n_seq, seq_id) if state else None
        if blob is not None:
            self.cache.put("prompts", key, struct.pack("<i", n_past), blob)


# A sequence's saved state is [u32 magic][i32 seq id][u32 n_streams][a section per stream], a stream
# that does not hold the sequence being just its u32 cell count, 0. The cache stores the one-stream
# form, so that a prompt evaluated in a parallel batch (one stream per sequence) serves a single
# question later, and the reverse. A layout that does not look like that is not cached.
_STATE_HEAD = 12


def one_stream(blob: bytes, n_streams: int, seq_id: int) -> bytes | None:
    if len(blob) < _STATE_HEAD or struct.unpack_from("<I", blob, 8)[0] != n_streams:
        return None
    stream = seq_id if n_streams > 1 else 0
    start = _STATE_HEAD + 4 * stream
    end = len(blob) - 4 * (n_streams - 1 - stream)
    if end <= start or any(blob[_STATE_HEAD:start]) or any(blob[end:]):
        return None
    return blob[:4] + struct.pack("<iI", 0, 1) + blob[start:end]


def for_stream(blob: bytes, n_streams: int, seq_id: int) -> bytes:
    if len(blob) < _STATE_HEAD or struct.unpack_from("<I", blob, 8)[0] != 1 or n_streams == 1:
        return blob
    return (blob[:4] + struct.pack("<iI", seq_id, n_streams) + bytes(4 * seq_id) + blob[_STATE_HEAD:]
            + bytes(4 * (n_streams - 1 - seq_id)))
