"""Prompt prefixes already evaluated: reused from the context's KV cells, or restored from disk.

Each sequence remembers the chunk keys and text tokens of the prompt its cells hold. A new request
reuses the longest start some sequence holds: whole chunks (the system prompt of every request in a
batch; the image of a repeated question), then the tokens a text chunk shares. A chat's request
(``Request.keep_answer``) keeps its answer's cells too, for the next turn, which writes the answer
again after the same prompt: text the prompt spells in other tokens than the cells hold (a template
re-tokenizes an earlier answer) is matched by its bytes and taken in the cells' tokens, and the last
answer's thinking, which the template leaves out, is cut out of the cells, the answer's cells moved
back (K-shift). Evaluated prefixes up to the last image are also saved to the disk cache and
restored by a later process.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..cache import DiskCache
from .llama_handles import Context
from .prompt import CacheKeys, PreparedPrompt, segment_keys


@dataclass
class Held:
    """What one sequence's cells hold: a prompt's chunks, maybe followed by the answer made to it."""

    keys: list[str]  # per chunk: hash of everything up to it (see ``prompt.segment_keys``)
    ends: list[int]  # per chunk: the position after it
    texts: list[list[int] | None]  # per chunk: its text tokens (None: an image); the last one with the
    # answer's evaluated tokens after it when the answer was kept (``keep_answer``)
    answer: tuple[int, int] | None = None  # a kept answer: (a, b), its thinking in cells [a, b) (a == b:
    # none), which the next prompt leaves out (a chat template writes earlier answers without it), and
    # the answer's own tokens from b on


@dataclass
class Reuse:
    """How much of a prompt a sequence already holds: whole chunks, then tokens of the next one."""

    chunks: int = 0
    tokens: int = 0  # of chunk ``chunks`` (a text chunk)
    n_past: int = 0
    shift: tuple[int, int, int] | None = None  # (a, b, n): drop cells [a, b), move [b, b + n) back to a
    adopt: tuple[int, list[int]] | None = None  # (chunk, tokens): the chunk's tokens with the kept answer
    # spelled as the model wrote it (the same text; the template's rewrite may split it otherwise)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# a kept answer's thinking ends with the closing marker; the answer text may start with a few
# whitespace tokens the chat history leaves out (the reasoning splitter strips them)
_ANSWER_LEAD = 4
Piece = Callable[[int], bytes]


def align(kept: list[int], wanted: list[int], piece: Piece) -> tuple[int, int]:
    """The longest start of ``kept`` and of ``wanted`` that spell the same bytes, ending together on
    token boundaries: (tokens of ``kept``, tokens of ``wanted``); (0, 0) if none."""
    a, b = bytearray(), bytearray()
    i = j = checked = 0
    best = (0, 0)
    while True:
        if len(a) == len(b) and i and j:
            best = (i, j)
        if len(a) <= len(b):
            if i >= len(kept):
                break
            a += piece(kept[i])
            i += 1
        else:
            if j >= len(wanted):
                break
            b += piece(wanted[j])
            j += 1
        n = min(len(a), len(b))
        if a[checked:n] != b[checked:n]:
            break
        checked = n
    if len(a) == len(b) and a == b and i and j:
        best = (i, j)
    return best


class ResidentPrefixes:
    """What each sequence of one context holds, and reuse of it by another request."""

    def __init__(self, ctx: Context, piece: Piece | None = None) -> None:
        self.ctx = ctx
        self.piece = piece  # a token's bytes, special tokens as their text (to match a kept answer)
        self._held: dict[int, Held] = {}  # seq id -> what its cells hold

    def reuse(self, prep: PreparedPrompt, seq_id: int) -> Reuse:
        """Make ``seq_id`` hold the longest start of ``prep`` that any sequence holds (whole chunks,
        then the tokens of a text chunk they share), and nothing else."""
        best_seq, best = seq_id, Reuse()
        for other, held in self._held.items():
            r = self._match(held, prep)
            if r.n_past > best.n_past or (r.n_past == best.n_past and other == seq_id):
                best_seq, best = other, r
        if best.n_past == 0:
            self.forget(seq_id)
            return Reuse()
        if best_seq != seq_id:
            # sequences live in separate streams: llama.cpp copies a whole stream (a buffer copy at the
            # next decode), then the copy is cut back to the shared part
            self.ctx.seq_rm(seq_id)
            self.ctx.seq_cp(best_seq, seq_id)
        if best.adopt is not None:
            chunk, tokens = best.adopt
            prep.segments[chunk].tokens = tokens
            prep.keys, prep.ends = segment_keys(prep.segments)
        if best.shift is not None:
            a, b, n = best.shift
            self.ctx.seq_rm(seq_id, a, b)
            self.ctx.seq_shift(seq_id, b, b + n, a - b)
        self.ctx.seq_rm(seq_id, best.n_past, -1)
        return best

    def _match(self, held: Held, prep: PreparedPrompt) -> Reuse:
        keys = held.keys
        n = 0
        # the last chunk is always evaluated (at least its last token): its last logits start the answer
        while n < min(len(keys), prep.n_chunks - 1) and keys[n] == prep.keys[n]:
            n += 1
        base = prep.ends[n - 1] if n else 0
        if n >= min(len(keys), prep.n_chunks):
            return Reuse(n, 0, base)
        mine, theirs = held.texts[n], prep.segments[n].tokens
        if mine is None or prep.segments[n].image is not None:
            return Reuse(n, 0, base)
        return self._text(held, mine, list(theirs), n, base, last=n == prep.n_chunks - 1)

    def _text(self, held: Held, mine: list[int], theirs: list[int], n: int, base: int, *, last: bool) -> Reuse:
        """How far text chunk ``n`` (``theirs``) goes on as the cells (``mine``) do: the same tokens, or
        the same text spelled in other tokens (a template writes an earlier answer again, and its tokens
        need not be the ones the model made: the model's are taken), up to a kept answer's thinking,
        past which the answer itself is matched (``_kept_answer``)."""
        original, k, shift = list(theirs), 0, None
        while True:
            room = len(theirs) - 1 if last else len(theirs)
            k = min(k + common_prefix(mine[k:], theirs[k:]), room)
            if k >= room:
                break
            if held.answer is not None and base + k == held.answer[0]:
                a, b = held.answer
                lead, used, spelled = self._kept_answer(mine[b - base:], theirs[k:room], moved=b > a)
                if used:
                    theirs[k:k + spelled] = mine[b - base + lead:b - base + lead + used]
                    shift = (a, b + lead, used) if b + lead > a else None
                    k += used
                break  # past the moved answer, cells and prompt no longer line up position for position
            used, spelled = align(mine[k:], theirs[k:room], self.piece) if self.piece is not None else (0, 0)
            if not used:
                break
            theirs[k:k + spelled] = mine[k:k + used]
            k += used
        return Reuse(n, k, base + k, shift, (n, theirs) if theirs != original else None)

    def _kept_answer(self, kept: list[int], wanted: list[int], *, moved: bool) -> tuple[int, int, int]:
        """A kept answer (its tokens after the thinking) against the prompt's text from there: (leading
        whitespace tokens skipped, answer tokens reused, prompt tokens they stand for); all 0 when
        nothing matches or the cells cannot be moved (then its thinking must stay: no reuse)."""
        best = (0, 0, 0)
        for lead in range(min(_ANSWER_LEAD, len(kept))):
            if lead and self.piece is not None and self.piece(kept[lead - 1]).strip():
                break  # only whitespace is skipped
            if self.piece is not None:
                used, spelled = align(kept[lead:], wanted, self.piece)
            else:
                used = spelled = common_prefix(kept[lead:], wanted)
            if used > best[1]:
                best = (lead, used, spelled)
        if (moved or best[0]) and not self.ctx.can_shift:
            return 0, 0, 0
        return best

    def changing(self, seq_id: int) -> None:
        """``seq_id``'s cells are about to change: what it held no longer counts."""
        self._held.pop(seq_id, None)

    def holds(self, seq_id: int, prep: PreparedPrompt) -> None:
        self._held[seq_id] = Held(list(prep.keys), list(prep.ends),
                                  [None if seg.image is not None else list(seg.tokens) for seg in prep.segments])

    def keep_prompt(self, seq_id: int, n_prompt: int) -> None:
        """Drop the generated cells; the prompt's stay for a later request sharing its start."""
        self.ctx.seq_rm(seq_id, n_prompt, -1)

    def keep_answer(self, seq_id: int, n_prompt: int, answer: list[int], think: tuple[int, int] | None) -> None:
        """Keep the answer's evaluated cells too (``answer``: their tokens; ``think``: the cells of its
        thinking, or of the prompt's empty thinking block): a follow-up question repeats the answer and
        reuses them (a chat)."""
        held = self._held.get(seq_id)
        last = held.texts[-1] if held is not None and held.texts else None
        if held is None or last is None:
            self.keep_prompt(seq_id, n_prompt)
            return
        self.ctx.seq_rm(seq_id, n_prompt + len(answer), -1)
        last.extend(answer)
        held.answer = think if think is not None else (n_prompt, n_prompt)

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
        """Load a saved prefix into ``seq_id``; its n_past, None when there is none (the sequence is left
        as it is), or -1 when the saved state would not load (the sequence is left empty)."""
        hit = self.cache.get("prompts", key)
        if hit is None:
            return None
        meta, payload = hit
        (n_past,) = struct.unpack("<i", meta[:4])
        if not self.ctx.set_seq_state(seq_id, for_stream(payload, self.ctx.n_seq, seq_id)):
            self.ctx.seq_rm(seq_id)
            return -1
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
