"""Sampling under a grammar (a JSON schema turned into GBNF), for the answer after the thinking.

llama.cpp's grammar sampler checks every candidate token against the grammar: on a 163,840-token
vocabulary that is a large part of a token's time on a CPU. Like llama.cpp's own common sampler,
kvl samples first without the grammar and asks the grammar about that one token; only when the
grammar refuses it are all the logits masked by the grammar and sampled again.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import math
import os
import sys
import threading
from collections.abc import Iterator

from ..errors import UsageError
from . import native
from .llama_handles import Context, Model, Owned, Sampler
from .types import GenerationSettings


class Grammar(Owned):
    """llama.cpp's grammar sampler for ``gbnf`` (root rule ``root``): its state follows the answer."""

    def __init__(self, model: Model, gbnf: str) -> None:
        llama = native.llama()
        with _parse_errors_kept_off_stderr(gbnf):
            ptr = llama.llama_sampler_init_grammar(model.vocab, gbnf.encode("utf-8"), b"root")
        if not ptr:
            raise UsageError(f"llama.cpp could not parse the answer grammar: {native.last_error('unknown error')}",
                             hint="simplify the schema")
        super().__init__(ptr, llama.llama_sampler_free)

    def allows(self, token: int) -> bool:
        llama = native.llama()
        one = (llama.llama_token_data * 1)()
        one[0].id, one[0].logit, one[0].p = token, 1.0, 0.0
        arr = llama.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)
        llama.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        return not math.isinf(arr.data[0].logit)

    def accept(self, token: int) -> None:
        native.llama().llama_sampler_accept(self.ptr, token)


_STDERR_LOCK = threading.Lock()
_PARSE_ERROR = b"parse: error parsing grammar: "
_KEPT = 1 << 20  # of what came to stderr meanwhile, at most this much is written out again


@contextlib.contextmanager
def _parse_errors_kept_off_stderr(gbnf: str) -> Iterator[None]:
    """llama.cpp's grammar parser writes a grammar it cannot parse, whole, to fd 2 (not through its
    log callback): a client's text, control characters and all, or pages of GBNF after a one-line
    error. Around the parse fd 2 is a pipe; afterwards what else came meanwhile is written out again."""
    with _STDERR_LOCK:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        read_end, write_end = os.pipe()
        saved = os.dup(2)
        chunks: list[bytes] = []

        def drain() -> None:
            while data := os.read(read_end, 65536):
                if sum(map(len, chunks)) < _KEPT:
                    chunks.append(data)

        reader = threading.Thread(target=drain, name="kvl-stderr", daemon=True)
        reader.start()
        os.dup2(write_end, 2)
        os.close(write_end)
        try:
            yield
        finally:
            os.dup2(saved, 2)  # the pipe's last writer is gone: the reader sees its end
            os.close(saved)
            reader.join(5)
            os.close(read_end)
            rest = _without_parse_error(b"".join(chunks), gbnf.encode("utf-8", "replace"))
            if rest:
                with contextlib.suppress(OSError):
                    os.write(2, rest)


def _without_parse_error(text: bytes, src: bytes) -> bytes:
    start = text.find(_PARSE_ERROR)
    if start < 0:
        return text
    at = text.find(src, start)
    end = at + len(src) + 1 if at >= 0 else len(text)
    return text[:start] + text[end:]


class Utf8Table:
    """Per token, how its bytes join a UTF-8 stream: a grammar matches code points and lets a token
    end inside a character, but a byte-level vocabulary can also spell byte sequences that are not
    UTF-8 at all, which would decode to U+FFFD. Built once per model (a ctypes call per token)."""

    def __init__(self, model: Model) -> None:
        import numpy as np

        n = model.n_vocab
        pieces = [model.piece(t) for t in range(n)]
        shapes = [_utf8_shape(p) for p in pieces]
        self.starts_clean = np.array([lead == 0 and ok for lead, ok in shapes], bool)
        self.cont_ids = [t for t, (lead, _) in enumerate(shapes) if lead > 0]
        self.cont_pieces = [pieces[t] for t in self.cont_ids]

    def mask(self, pending: bytes) -> object:
        """The tokens that may follow an answer whose last character is ``pending`` (incomplete)."""
        import numpy as np

        if not pending:
            return self.starts_clean.copy()
        allowed = np.zeros(len(self.starts_clean), bool)  # only tokens that go on with that character
        for t, piece in zip(self.cont_ids, self.cont_pieces, strict=True):
            allowed[t] = _valid(pending + piece)
        return allowed


def _utf8_shape(data: bytes) -> tuple[int, bool]:
    """(continuation bytes it starts with, whether it is valid UTF-8 on its own but for a last
    character that may be cut short)."""
    lead = 0
    while lead < len(data) and 0x80 <= data[lead] < 0xC0:
        lead += 1
    return lead, _valid(data[lead:])


def _char_len(first: int) -> int:
    return 2 if first < 0xE0 else 3 if first < 0xF0 else 4


def _valid(data: bytes) -> bool:
    """``data`` is UTF-8, its last character possibly not complete yet."""
    try:
        codecs.getincrementaldecoder("utf-8")("strict").decode(data, final=False)
    except UnicodeDecodeError:
        return False
    # Python takes any lead byte and continuation as a prefix; some can never be completed (UTF-8's
    # table of well-formed sequences: surrogates after ED, overlong forms after E0 and F0, past U+10FFFF)
    tail = _tail(data)
    if len(tail) < 2:
        return True
    lo, hi = _SECOND_BYTE.get(tail[0], (0x80, 0xBF))
    return lo <= tail[1] <= hi


_SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def _tail(data: bytes) -> bytes:
    """The bytes of ``data``'s last character when it is not complete (``data`` is valid UTF-8 so far)."""
    for k in range(1, min(4, len(data)) + 1):
        b = data[-k]
        if b < 0x80:
            return b""
        if b >= 0xC0:  # the last character's first byte
            return data[-k:] if k < _char_len(b) else b""
    return b""


_TABLES: dict[str, Utf8Table] = {}


class ConstrainedSampler:
    """The answer's sampler chain with a grammar (see the module's note on speed)."""

    def __init__(self, settings: GenerationSettings, model: Model, gbnf: str) -> None:
        self.grammar = Grammar(model, gbnf)
        self.chain = Sampler(settings)
        self.model = model
        self.n_vocab = model.n_vocab
        self.pending = b""  # the bytes of the answer's last character, when it is not complete yet
        llama = native.llama()
        self._cands = (llama.llama_token_data * self.n_vocab)()
        self.resampled = 0  # tokens refused (grammar or UTF-8) and sampled again under both

    def sample(self, ctx: Context, logits_index: int) -> int:
        token = self.chain.sample(ctx, logits_index)
        if not self._fits(token):
            self.resampled += 1
            allowed = self.utf8.mask(self.pending)
            for _ in range(8):  # the mask is exact; the check is a guard: refuse, sample again
                token = self._resample(ctx, logits_index, allowed)
                if self._fits(token):
                    break
                allowed[token] = False  # type: ignore[index]
        self.grammar.accept(token)
        if not self.model.is_eog(token):
            self.pending = _tail(self.pending + self.model.piece(token))
        return token

    @property
    def utf8(self) -> Utf8Table:
        """Built on the first refusal (about a second on a 163,840-token vocabulary), once per model."""
        key = str(self.model.path)
        if key not in _TABLES:
            _TABLES[key] = Utf8Table(self.model)
        return _TABLES[key]

    def _fits(self, token: int) -> bool:
        if self.model.is_eog(token):
            return not self.pending and self.grammar.allows(token)
        return _valid(self.pending + self.model.piece(token)) and self.grammar.allows(token)

    def _resample(self, ctx: Context, logits_index: int, allowed: object) -> int:
        llama = native.llama()
        logits = llama.llama_get_logits_ith(ctx.ptr, logits_index)
        cands = self._cands
        ctypes.memmove(cands, _packed(logits, self.n_vocab, allowed), ctypes.sizeof(cands))
        arr = llama.llama_token_data_array(data=cands, size=self.n_vocab, selected=-1, sorted=False)
        llama.llama_sampler_apply(self.grammar.ptr, ctypes.byref(arr))
        llama.llama_sampler_apply(self.chain.ptr, ctypes.byref(arr))
        return int(arr.data[arr.selected].id)

    def close(self) -> None:
        self.chain.close()
        self.grammar.close()


def _packed(logits: object, n: int, allowed: object) -> bytes:
    """(id, logit, p) records for every token, as llama_token_data expects them; tokens not
    ``allowed`` get -inf."""
    import numpy as np

    data = np.empty(n, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
    data["id"] = np.arange(n, dtype=np.int32)
    data["logit"] = np.where(allowed, np.ctypeslib.as_array(logits, shape=(n,)), -np.inf)  # type: ignore
    data["p"] = 0.0
    return data.tobytes()
