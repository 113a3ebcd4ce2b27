"""Owning wrappers around llama.cpp and libmtmd objects: the only place native memory is freed.

Each handle frees its object in ``close`` (and as a context manager), once; the rest of the
engine calls methods on handles and never touches ``llama_cpp`` itself. Media handles (the
projector and tokenized prompts) live in ``mtmd_handles``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import EngineError, ModelError
from . import native
from .types import EngineConfig, GenerationSettings

_O = TypeVar("_O", bound="Owned")
_DAMAGED_HINT = "the file may be damaged or from a newer llama.cpp: pull it again or upgrade llama-cpp-python"


NativePtr = object  # a ctypes pointer (or, for a batch, struct) that only its handle passes to llama.cpp


class Owned:
    """A native pointer and the function that frees it."""

    def __init__(self, ptr: NativePtr, free: Callable[[NativePtr], object]) -> None:
        self.ptr = ptr
        self._free = free

    def close(self) -> None:
        if self.ptr:
            self._free(self.ptr)
        self.ptr = None

    def __enter__(self: _O) -> _O:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Model(Owned):
    """A loaded text model (weights, or the vocabulary only) and its tokenizer."""

    def __init__(self, path: Path, *, gpu_layers: int = 0, repack: bool = False, vocab_only: bool = False) -> None:
        llama = native.llama()
        params = llama.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        params.use_extra_bufts = repack
        params.vocab_only = vocab_only
        native.recent_errors.clear()
        ptr = llama.llama_model_load_from_file(str(path).encode(), params)
        if not ptr:
            raise ModelError(f"llama.cpp could not load {path.name}: {native.last_error('unknown error')}",
                             hint=_DAMAGED_HINT)
        super().__init__(ptr, llama.llama_model_free)
        self.path = path
        self.vocab = llama.llama_model_get_vocab(ptr)

    @property
    def n_embd(self) -> int:
        return int(native.llama().llama_model_n_embd(self.ptr))

    @property
    def n_ctx_train(self) -> int:
        return int(native.llama().llama_model_n_ctx_train(self.ptr))

    @property
    def n_vocab(self) -> int:
        return int(native.llama().llama_vocab_n_tokens(self.vocab))

    def chat_template(self) -> bytes | None:
        tmpl = native.llama().llama_model_chat_template(self.ptr, None)
        return bytes(tmpl) if tmpl else None

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        llama = native.llama()
        data = text.encode("utf-8")
        n_max = len(data) + 16
        buf = (llama.llama_token * n_max)()
        n = llama.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, special)
        if n < 0:
            buf = (llama.llama_token * -n)()
            n = llama.llama_tokenize(self.vocab, data, len(data), buf, -n, False, special)
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (special tokens as empty unless ``special``: answers never show them)."""
        llama = native.llama()
        buf = ctypes.create_string_buffer(64)
        n = llama.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def special_token(self, text: str) -> int | None:
        toks = self.tokenize(text, special=True)
        return toks[0] if len(toks) == 1 else None

    @property
    def eos(self) -> int:
        return int(native.llama().llama_vocab_eos(self.vocab))

    def is_eog(self, token: int) -> bool:
        return bool(native.llama().llama_vocab_is_eog(self.vocab, token))


def apply_chat_template(template: bytes | None, messages: list[tuple[str, str]]) -> str | None:
    """llama.cpp's rendering of ``messages`` with a generation prompt; None if it does not know
    the template."""
    llama = native.llama()
    arr = (llama.llama_chat_message * len(messages))()
    keep = []
    for i, (role, content) in enumerate(messages):
        r, c = role.encode(), content.encode("utf-8")
        keep += [r, c]
        arr[i].role = r
        arr[i].content = c
    size = 4 * sum(len(c) for c in keep) + 1024
    buf = ctypes.create_string_buffer(size)
    n = llama.llama_chat_apply_template(template, arr, len(messages), True, buf, size)
    if n < 0:
        return None
    if n > size:
        buf = ctypes.create_string_buffer(n + 1)
        n = llama.llama_chat_apply_template(template, arr, len(messages), True, buf, n + 1)
    return buf.raw[:n].decode("utf-8")


class Context(Owned):
    """A llama.cpp context: ``n_seq`` sequences of ``n_ctx`` cells each, one KV stream per sequence."""

    def __init__(self, model: Model, config: EngineConfig, n_seq: int, threads: int) -> None:
        llama = native.llama()
        params = llama.llama_context_default_params()
        params.n_ctx = config.n_ctx * n_seq
        params.n_batch = config.n_batch
        params.n_ubatch = min(config.n_ubatch, config.n_batch)
        params.n_threads = threads
        params.n_threads_batch = threads
        params.n_seq_max = n_seq
        # one KV stream per sequence: a token attends to its own sequence's cells only (a unified
        # pool would make every token of a batch attend over all of them, masked, which cost a
        # third of the generation speed with 4 sequences)
        params.kv_unified = False
        ptr = llama.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise EngineError(f"llama.cpp could not create a context of {config.n_ctx} tokens: "
                              f"{native.last_error('unknown error')}", hint="lower --ctx (less memory) or --gpu-layers")
        super().__init__(ptr, llama.llama_free)
        self.n_seq = n_seq
        self.n_ctx = int(llama.llama_n_ctx(ptr)) // n_seq  # per sequence
        self.threads = self._threads_now = threads

    def set_threads(self, threads: int) -> None:
        if threads != self._threads_now:
            native.llama().llama_set_n_threads(self.ptr, threads, threads)
            self._threads_now = threads

    def decode(self, batch: Batch) -> int:
        return int(native.llama().llama_decode(self.ptr, batch.ptr))

    def synchronize(self) -> None:
        native.llama().llama_synchronize(self.ptr)

    def _memory(self) -> Any:
        return native.llama().llama_get_memory(self.ptr)

    def seq_rm(self, seq_id: int, start: int = -1, end: int = -1) -> None:
        native.llama().llama_memory_seq_rm(self._memory(), seq_id, start, end)

    def seq_shift(self, seq_id: int, start: int, end: int, delta: int) -> None:
        """Move cells [start, end) of ``seq_id`` by ``delta`` positions (llama.cpp's K-shift)."""
        native.llama().llama_memory_seq_add(self._memory(), seq_id, start, end, delta)

    @property
    def can_shift(self) -> bool:
        """Whether this context's memory can move cells to other positions (``seq_shift``)."""
        return bool(native.llama().llama_memory_can_shift(self._memory()))

    def seq_cp(self, src: int, dst: int) -> None:
        """Copy a whole sequence (a stream: partial cross-stream copies abort in llama.cpp)."""
        native.llama().llama_memory_seq_cp(self._memory(), src, dst, -1, -1)

    def eval_tokens(self, tokens: list[int], n_past: int, seq_id: int, n_batch: int, *, logits_last: bool) -> int:
        """Evaluate prompt tokens into ``seq_id`` from ``n_past``, ``n_batch`` at a time (logits only
        for the last token, when asked); returns the new n_past."""
        with Batch(max(1, min(n_batch, len(tokens)))) as batch:
            for start in range(0, len(tokens), n_batch):
                batch.clear()
                part = tokens[start:start + n_batch]
                for j, tok in enumerate(part):
                    last = logits_last and start + j == len(tokens) - 1
                    batch.add(tok, n_past + start + j, seq_id, logits=last)
                rc = self.decode(batch)
                if rc != 0:
                    raise EngineError(f"llama.cpp failed to evaluate the prompt (code {rc}): {native.last_error()}")
        return n_past + len(tokens)

    def seq_state(self, seq_id: int) -> bytes:
        llama = native.llama()
        size = int(llama.llama_state_seq_get_size(self.ptr, seq_id))
        buf = (ctypes.c_ubyte * size)()
        n = int(llama.llama_state_seq_get_data(self.ptr, buf, size, seq_id))
        return bytes(memoryview(buf)[:n]) if n > 0 else b""

    def set_seq_state(self, seq_id: int, state: bytes) -> bool:
        buf = (ctypes.c_ubyte * len(state)).from_buffer_copy(state)
        return bool(native.llama().llama_state_seq_set_data(self.ptr, buf, len(state), seq_id))


class Batch(Owned):
    """A token batch of fixed capacity, filled with ``add`` and emptied with ``clear``."""

    def __init__(self, capacity: int) -> None:
        llama = native.llama()
        self._batch = llama.llama_batch_init(capacity, 0, 1)
        super().__init__(self._batch, llama.llama_batch_free)
        self.capacity = capacity
        self.n = 0

    def clear(self) -> None:
        self.n = 0
        self._batch.n_tokens = 0

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Append one token; returns its index (where its logits are, when asked for)."""
        if self.n >= self.capacity:
            raise EngineError("internal batch overflow")
        b, n = self._batch, self.n
        b.token[n] = token
        b.pos[n] = pos
        b.n_seq_id[n] = 1
        b.seq_id[n][0] = seq_id
        b.logits[n] = 1 if logits else 0
        self.n += 1
        b.n_tokens = self.n
        return n


class Sampler(Owned):
    """llama.cpp's native sampler chain for one answer."""

    def __init__(self, s: GenerationSettings) -> None:
        llama = native.llama()
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        super().__init__(chain, llama.llama_sampler_free)
        if s.temperature <= 0:
            self._add(llama.llama_sampler_init_greedy())
            return
        if s.top_k > 0:
            self._add(llama.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            self._add(llama.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0:
            self._add(llama.llama_sampler_init_min_p(s.min_p, 1))
        self._add(llama.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed is not None else 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: random
        self._add(llama.llama_sampler_init_dist(seed))

    def _add(self, sampler: Any) -> None:
        native.llama().llama_sampler_chain_add(self.ptr, sampler)  # the chain owns it from now on

    def sample(self, ctx: Context, logits_index: int) -> int:
        return int(native.llama().llama_sampler_sample(self.ptr, ctx.ptr, logits_index))


def backend_init() -> None:
    native.llama().llama_backend_init()
