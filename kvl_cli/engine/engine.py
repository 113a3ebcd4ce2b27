"""The engine: Kimi-VL through libmtmd and llama.cpp's low-level API, streaming events.

One ``Engine`` loads the text model and its projector once and serves many requests. A request
is a list of chat messages whose user text holds one media marker per image; ``generate``
encodes the images, prefills the prompt, samples with llama.cpp's native sampler chain and
yields events: phases with progress, thinking and answer deltas, and a final ``Done``.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import hashlib
import queue
import struct
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import DiskCache, file_identity, make_key
from ..errors import ContextError, EngineError, KvlError, ModelError
from . import native
from .gguf_info import read_gguf_info
from .reasoning import THINK_CLOSE, THINK_OPEN, Phase, ReasoningSplitter

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant"
KIMI_ARCH = "deepseek2"
KIMI_PROJECTOR = "kimivl"


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


@dataclass
class GenerationSettings:
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 4096
    think_budget: int | None = None  # None: unlimited; 0 = no thinking at all


@dataclass
class Request:
    user_text: str  # with one media marker (``Engine.marker``) per image, in order
    images: list[ImageInput] = field(default_factory=list)
    system: str | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)


# ---- events ---------------------------------------------------------------------------------


@dataclass
class PhaseEvent:
    phase: str  # "encode" | "prefill" | "generate"
    index: int = 0
    total: int = 0


@dataclass
class TextEvent:
    phase: Phase  # THINKING or ANSWER
    text: str


@dataclass
class Result:
    answer: str
    thinking: str
    finish_reason: str  # "stop" | "length" | "context" | "interrupted"
    tokens: dict[str, int]
    timings: dict[str, float]
    image_tokens: list[int]
    think_budget_hit: bool = False
    cached: dict[str, int] = field(default_factory=dict)  # images: encodes skipped; prefix_tokens: restored


@dataclass
class DoneEvent:
    result: Result


@dataclass
class FailedEvent:
    """From ``generate_many`` only: this request failed; the others go on."""

    error: KvlError


Event = PhaseEvent | TextEvent | DoneEvent
AnyEvent = Event | FailedEvent


# ---- model checks before loading --------------------------------------------------------------


def check_model_pair(model: Path, mmproj: Path) -> list[str]:
    """Validate the pair from their headers (milliseconds); return warnings, raise ModelError."""
    warnings: list[str] = []
    text = read_gguf_info(model)
    if text.is_projector:
        raise ModelError(
            f"{model} is a vision projector, not a text model",
            hint="pass it as --mmproj and give the text model with --model",
        )
    proj = read_gguf_info(mmproj)
    if not proj.is_projector:
        raise ModelError(
            f"{mmproj} is not a vision projector (architecture {proj.architecture or 'unknown'})",
            hint="pass the mmproj-*.gguf file that belongs to the model as --mmproj",
        )
    if text.architecture != KIMI_ARCH:
        warnings.append(
            f"{model.name} is a '{text.architecture}' model, not Kimi-VL ({KIMI_ARCH}); prompts may not fit it"
        )
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


# ---- the engine -------------------------------------------------------------------------------


class Engine:
    """Text model + projector, loaded once. Not thread-safe: one request at a time."""

    def __init__(self, config: EngineConfig, cache: DiskCache | None = None, *,
                 prefetch: Request | None = None) -> None:
        """Load the pair. ``prefetch``: the first request, whose images (CPU-only builds, one lane)
        are encoded while the text model is still loading: when the model has to come from disk (a
        cold start), the encoder's seconds hide behind the reading."""
        self.config = config
        self.cache = cache
        self._model: Any = None
        self._ctx: Any = None
        self._mctx: Any = None
        self._vocab_model: Any = None
        self._contexts_made: list[Any] = []  # every context and projector this engine created (all lanes)
        self._mctxs_made: list[Any] = []
        self._want_threads = self._threads_now = 0  # a lane's threads: changed when other lanes finish
        self._lanes: list[Engine] = [self]
        self._owner = True
        self._ident: tuple[str, str, str] | None = None
        # per sequence: the chunk keys and end positions of the prompt its KV cells hold
        self._resident: dict[int, tuple[list[str], list[int]]] = {}
        # image key -> (embeddings, seconds) encoded ahead during the load (shared by every lane)
        self._pre_encoded: dict[str, tuple[bytes, float]] = {}
        self.load_seconds = 0.0
        self.warnings = check_model_pair(config.model, config.mmproj)
        self._load(prefetch)

    # -- loading --

    def _load(self, prefetch: Request | None = None) -> None:
        cfg = self.config
        native.install_log_router(cfg.verbose)
        llama = native.llama()
        t0 = time.perf_counter()
        llama.llama_backend_init()
        gpu = native.gpu_offload_supported()
        use_gpu = gpu and cfg.n_gpu_layers != 0
        threads = cfg.n_threads or native.physical_cores()
        n_lanes = max(1, min(cfg.lanes, threads)) if not use_gpu else 1
        lane_threads = max(1, threads // n_lanes)
        # In a CPU-only build the projector loads while the text model does: libmtmd needs only the
        # model's vocabulary and sizes, which a vocabulary-only load gives in a fraction of a second,
        # and both loads are single-threaded (reading, mapping), so two cores do them side by side.
        # (GPU backends are left to initialise one at a time.)
        side: _Side | None = None
        if not gpu:
            def side_work() -> list[Any]:
                mctxs = self._load_projectors(None, n_lanes, lane_threads, False)
                # with one lane the encoder has every thread; with several, a lane's encoder has a
                # share of them and the other cores would wait for it: no encoding ahead
                if prefetch is not None and prefetch.images and n_lanes == 1:
                    with contextlib.suppress(KvlError):  # the request itself will say what is wrong
                        self._pre_encode(mctxs[0], prefetch)
                return mctxs

            side = _Side(side_work)
        try:
            mparams = llama.llama_model_default_params()
            mparams.n_gpu_layers = cfg.n_gpu_layers if gpu else 0
            mparams.use_extra_bufts = bool(cfg.repack)
            native.recent_errors.clear()
            model = llama.llama_model_load_from_file(str(cfg.model).encode(), mparams)
            if not model:
                raise ModelError(
                    f"llama.cpp could not load {cfg.model.name}: {native.last_error('unknown error')}",
                    hint="the file may be damaged or from a newer llama.cpp: pull it again or upgrade llama-cpp-python",
                )
            self._model = model
            self._vocab = llama.llama_model_get_vocab(model)
            self.n_ctx_train = int(llama.llama_model_n_ctx_train(model))
            self.n_embd = int(llama.llama_model_n_embd(model))
            self.threads = lane_threads
            self.gpu = use_gpu
            contexts = [self._new_context(lane_threads) for _ in range(n_lanes)]
            if side is not None:
                mctxs = side.join()
            else:
                mctxs = self._load_projectors(model, n_lanes, lane_threads, use_gpu)
        except BaseException:
            if side is not None:  # let it finish: what it made is freed with the rest
                with contextlib.suppress(BaseException):
                    side.join()
            self.close()
            raise
        self._ctx, self._mctx = contexts[0], mctxs[0]
        self._im_end = self._special_token("<|im_end|>")
        self._template = self._chat_template()
        self._lanes = [self] + [self._lane(c, m) for c, m in zip(contexts[1:], mctxs[1:], strict=True)]
        self.load_seconds = time.perf_counter() - t0

    def _new_context(self, threads: int) -> Any:
        cfg = self.config
        llama = native.llama()
        cparams = llama.llama_context_default_params()
        n_seq = max(1, cfg.parallel)
        cparams.n_ctx = cfg.n_ctx * n_seq
        cparams.n_batch = cfg.n_batch
        cparams.n_ubatch = min(cfg.n_ubatch, cfg.n_batch)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.n_seq_max = n_seq
        # one KV stream per sequence: a token attends to its own sequence's cells only (a unified
        # pool would make every token of a batch attend over all of them, masked, which cost a
        # third of the generation speed with 4 sequences)
        cparams.kv_unified = False
        ctx = llama.llama_init_from_model(self._model, cparams)
        if not ctx:
            raise EngineError(
                f"llama.cpp could not create a context of {cfg.n_ctx} tokens: {native.last_error('unknown error')}",
                hint="lower --ctx (less memory) or --gpu-layers",
            )
        self._contexts_made.append(ctx)
        self.n_seq = n_seq
        self.n_ctx = int(llama.llama_n_ctx(ctx)) // n_seq  # per sequence
        return ctx

    def _load_projectors(self, model: Any, n: int, threads: int, use_gpu: bool) -> list[Any]:
        """``n`` libmtmd contexts (one per lane). With no ``model``, a vocabulary-only load of the
        text model serves them (kept until ``close``)."""
        cfg = self.config
        llama = native.llama()
        mt = native.mtmd()
        if model is None:
            vparams = llama.llama_model_default_params()
            vparams.vocab_only = True
            vparams.n_gpu_layers = 0
            model = llama.llama_model_load_from_file(str(cfg.model).encode(), vparams)
            if not model:
                raise ModelError(
                    f"llama.cpp could not load {cfg.model.name}: {native.last_error('unknown error')}",
                    hint="the file may be damaged or from a newer llama.cpp: pull it again or upgrade llama-cpp-python",
                )
            self._vocab_model = model
        self._marker_bytes = mt.mtmd_default_marker()
        out = []
        for _ in range(n):
            mp = mt.mtmd_context_params_default()
            mp.use_gpu = use_gpu
            mp.n_threads = threads
            mp.print_timings = cfg.verbose
            mp.warmup = False  # the first real image allocates what it needs; a warm-up only costs time on CPU
            if cfg.image_min_tokens is not None:
                mp.image_min_tokens = cfg.image_min_tokens
            if cfg.image_max_tokens is not None:
                mp.image_max_tokens = cfg.image_max_tokens
            mctx = mt.mtmd_init_from_file(str(cfg.mmproj).encode(), model, mp)
            if not mctx:
                raise ModelError(
                    f"libmtmd could not load the projector {cfg.mmproj.name}: {native.last_error('unknown error')}",
                    hint="use the mmproj file that belongs to this model",
                )
            self._mctxs_made.append(mctx)
            if not mt.mtmd_support_vision(mctx):
                raise ModelError(f"{cfg.mmproj.name} has no vision encoder", hint="use the model's image projector")
            out.append(mctx)
        return out

    def _lane(self, ctx: Any, mctx: Any) -> Engine:
        """Another worker on the same model: its own context, projector and KV cells."""
        lane = Engine.__new__(Engine)
        lane.__dict__.update({k: v for k, v in self.__dict__.items()
                              if k not in ("_ctx", "_mctx", "_resident", "_lanes", "_ident", "_owner",
                                           "_contexts_made", "_mctxs_made", "_vocab_model")})
        lane._ctx, lane._mctx = ctx, mctx
        lane._resident = {}
        lane._lanes = [lane]
        lane._ident = None
        lane._owner = False
        lane._contexts_made, lane._mctxs_made, lane._vocab_model = [], [], None
        return lane

    @property
    def marker(self) -> str:
        """The placeholder that marks where an image goes in ``Request.user_text``."""
        return str(self._marker_bytes.decode("utf-8"))

    def _special_token(self, text: str) -> int | None:
        toks = self.tokenize(text, special=True)
        return toks[0] if len(toks) == 1 else None

    def _chat_template(self, model: Any = None) -> bytes | None:
        llama = native.llama()
        tmpl = llama.llama_model_chat_template(model or self._model, None)
        return bytes(tmpl) if tmpl else None

    def _pre_encode(self, mctx: Any, request: Request) -> None:
        """Encode ``request``'s images with ``mctx`` ahead of time (see ``__init__``), unless the disk
        cache already holds them or the evaluated prompt that contains them."""
        mt = native.mtmd()
        llama = native.llama()
        template = self._chat_template(self._vocab_model)
        chunks = self._tokenize_prompt(self._prompt_text(request, template), request.images, mctx)
        try:
            n_chunks = int(mt.mtmd_input_chunks_size(chunks))
            keys, _ = self._chunk_keys(chunks, n_chunks)
            image_type = mt.MTMD_INPUT_CHUNK_TYPE_IMAGE
            images = [i for i in range(n_chunks)
                      if mt.mtmd_input_chunk_get_type(mt.mtmd_input_chunks_get(chunks, i)) == image_type]
            cache = self.cache if self.cache is not None and self.cache.enabled else None
            if not images or (cache is not None and cache.has("prompts", self._prefix_key(keys, images[-1]))):
                return
            # a vocabulary-only model reports no sizes: the header has the width
            n_embd = (int(llama.llama_model_n_embd(self._vocab_model))
                      or read_gguf_info(self.config.model).text_embedding_length)
            if not n_embd:
                return
            for i in images:
                chunk = mt.mtmd_input_chunks_get(chunks, i)
                key = self._image_key(chunk)
                if key in self._pre_encoded or (cache is not None and cache.has("embeddings", key)):
                    continue
                t0 = time.perf_counter()
                if mt.mtmd_encode_chunk(mctx, chunk) != 0:
                    return
                n_floats = int(mt.mtmd_input_chunk_get_n_tokens(chunk)) * n_embd
                data = ctypes.string_at(mt.mtmd_get_output_embd(mctx), n_floats * 4)
                self._pre_encoded[key] = (data, time.perf_counter() - t0)
        finally:
            mt.mtmd_input_chunks_free(chunks)

    def close(self) -> None:
        """Free the contexts, projectors and (for the engine that loaded it) the model."""
        llama = native.llama()
        mt = native.mtmd()
        for mctx in self._mctxs_made:
            mt.mtmd_free(mctx)
        for ctx in self._contexts_made:
            llama.llama_free(ctx)
        self._mctxs_made, self._contexts_made = [], []
        self._mctx = self._ctx = None
        self._lanes = [self]
        if self._owner:
            if self._vocab_model:
                llama.llama_model_free(self._vocab_model)
                self._vocab_model = None
            if self._model:
                llama.llama_model_free(self._model)
                self._model = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- text helpers --

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        llama = native.llama()
        data = text.encode("utf-8")
        n_max = len(data) + 16
        buf = (llama.llama_token * n_max)()
        n = llama.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, special)
        if n < 0:
            buf = (llama.llama_token * -n)()
            n = llama.llama_tokenize(self._vocab, data, len(data), buf, -n, False, special)
        return list(buf[:n])

    def _piece(self, token: int) -> bytes:
        llama = native.llama()
        buf = ctypes.create_string_buffer(64)
        n = llama.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def format_prompt(self, request: Request, *, prefill: str = "", template: bytes | None = None) -> str:
        """The chat prompt, from the model's own template (llama.cpp applies it)."""
        llama = native.llama()
        template = template or self._template
        system = request.system if request.system is not None else DEFAULT_SYSTEM_PROMPT
        msgs = [("system", system), ("user", request.user_text)]
        arr = (llama.llama_chat_message * len(msgs))()
        keep = []
        for i, (role, content) in enumerate(msgs):
            r, c = role.encode(), content.encode("utf-8")
            keep += [r, c]
            arr[i].role = r
            arr[i].content = c
        size = 4 * sum(len(c) for c in keep) + 1024
        buf = ctypes.create_string_buffer(size)
        n = llama.llama_chat_apply_template(template, arr, len(msgs), True, buf, size)
        if n < 0:
            # the model carries no template llama.cpp recognises: use Kimi-VL's format
            text = "".join(
                f"<|im_{'system' if r == 'system' else 'user'}|>{r}<|im_middle|>{c}<|im_end|>" for r, c in msgs
            ) + "<|im_assistant|>assistant<|im_middle|>"
        else:
            if n > size:
                buf = ctypes.create_string_buffer(n + 1)
                n = llama.llama_chat_apply_template(template, arr, len(msgs), True, buf, n + 1)
            text = buf.raw[:n].decode("utf-8")
        return text + prefill

    # -- generation --

    def _prompt_text(self, request: Request, template: bytes | None = None) -> str:
        no_think = request.settings.think_budget == 0
        return self.format_prompt(request, prefill=(THINK_OPEN + THINK_CLOSE) if no_think else "", template=template)

    def _tokenize_prompt(self, prompt: str, images: list[ImageInput], mctx: Any = None) -> Any:
        mt = native.mtmd()
        mctx = mctx or self._mctx
        bitmaps = []
        for img in images:
            if len(img.rgb) != img.width * img.height * 3:
                raise EngineError(f"{img.label or 'image'}: pixel buffer does not match {img.width}x{img.height} RGB")
            data = (ctypes.c_ubyte * len(img.rgb)).from_buffer_copy(img.rgb)
            bmp = mt.mtmd_bitmap_init(img.width, img.height, data)
            if not bmp:
                raise EngineError(f"libmtmd could not take {img.label or 'the image'} ({img.width}x{img.height})")
            mt.mtmd_bitmap_set_id(bmp, img.id.encode())
            bitmaps.append(bmp)
        chunks = mt.mtmd_input_chunks_init()
        try:
            text = mt.mtmd_input_text()
            encoded = prompt.encode("utf-8")
            text.text = encoded
            text.text_len = len(encoded)
            text.add_special = True
            text.parse_special = True
            arr = (mt.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = mt.mtmd_tokenize(mctx, chunks, ctypes.byref(text), arr, len(bitmaps))
        finally:
            for bmp in bitmaps:
                mt.mtmd_bitmap_free(bmp)
        if rc != 0:
            mt.mtmd_input_chunks_free(chunks)
            why = {1: "the number of images does not match the image markers in the prompt",
                   2: "an image could not be preprocessed"}.get(rc, f"error {rc}")
            raise EngineError(f"libmtmd could not tokenize the prompt: {why}")
        return chunks


    # -- caches --

    def _identity(self) -> tuple[str, str, str]:
        import llama_cpp

        if self._ident is None:
            self._ident = (file_identity(self.config.model), file_identity(self.config.mmproj),
                           str(llama_cpp.__version__))
        return self._ident

    def _image_key(self, chunk: Any) -> str:
        mt = native.mtmd()
        _, proj, version = self._identity()
        cid = mt.mtmd_input_chunk_get_id(chunk)
        return make_key("embd", proj, version, cid.decode() if cid else None,
                        int(mt.mtmd_input_chunk_get_n_tokens(chunk)),
                        self.config.image_min_tokens, self.config.image_max_tokens)

    @staticmethod
    def _chunk_keys(chunks: Any, n_chunks: int) -> tuple[list[str], list[int]]:
        """For each chunk: a hash of every token and image up to it, and the position after it."""
        mt = native.mtmd()
        h = hashlib.sha256()
        keys: list[str] = []
        ends: list[int] = []
        pos = 0
        for i in range(n_chunks):
            chunk = mt.mtmd_input_chunks_get(chunks, i)
            if mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                toks = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                h.update(b"T" + bytes(ctypes.string_at(toks, n.value * ctypes.sizeof(ctypes.c_int32))))
            else:
                cid = mt.mtmd_input_chunk_get_id(chunk) or b""
                h.update(b"I" + cid + str(int(mt.mtmd_input_chunk_get_n_tokens(chunk))).encode())
            pos += int(mt.mtmd_input_chunk_get_n_pos(chunk))
            keys.append(h.hexdigest())
            ends.append(pos)
        return keys, ends

    def _prefix_key(self, keys: list[str], upto: int) -> str:
        """Every token and image of chunks[0..upto], plus the files and library that evaluated them."""
        return make_key("prefix", *self._identity(), self.config.image_min_tokens, self.config.image_max_tokens,
                        keys[upto])

    def _reuse_resident(self, prep: _Prepared, seq_id: int) -> int:
        """Reuse the longest run of leading chunks that some sequence already holds in the KV cache
        (the system prompt of every request in a batch; the image of a repeated question). Returns
        the number of chunks reused; ``seq_id`` then holds exactly their positions."""
        llama = native.llama()
        mem = llama.llama_get_memory(self._ctx)
        best_seq, best = seq_id, 0
        for other, (keys, _) in self._resident.items():
            n = 0
            # the last chunk is always evaluated: its last token's logits start the answer
            while n < min(len(keys), prep.n_chunks - 1) and keys[n] == prep.keys[n]:
                n += 1
            if n > best or (n == best and other == seq_id):
                best_seq, best = other, n
        if best == 0:
            llama.llama_memory_seq_rm(mem, seq_id, -1, -1)
            self._resident.pop(seq_id, None)
            return 0
        end = prep.ends[best - 1]
        if best_seq != seq_id:
            # sequences live in separate streams: llama.cpp copies a whole stream (a buffer copy at the
            # next decode), then the copy is cut back to the shared part
            llama.llama_memory_seq_rm(mem, seq_id, -1, -1)
            llama.llama_memory_seq_cp(mem, best_seq, seq_id, -1, -1)
        llama.llama_memory_seq_rm(mem, seq_id, end, -1)
        return best

    def _restore_prefix(self, key: str, seq_id: int) -> int | None:
        llama = native.llama()
        assert self.cache is not None
        hit = self.cache.get("prompts", key)
        if hit is None:
            return None
        meta, payload = hit
        (n_past,) = struct.unpack("<i", meta[:4])
        payload = _state_for_stream(payload, self.n_seq, seq_id)
        buf = (ctypes.c_ubyte * len(payload)).from_buffer_copy(payload)
        if not llama.llama_state_seq_set_data(self._ctx, buf, len(payload), seq_id):
            llama.llama_memory_seq_rm(llama.llama_get_memory(self._ctx), seq_id, -1, -1)
            return None
        return int(n_past)

    def _save_prefix(self, key: str, seq_id: int, n_past: int) -> None:
        llama = native.llama()
        assert self.cache is not None
        size = int(llama.llama_state_seq_get_size(self._ctx, seq_id))
        buf = (ctypes.c_ubyte * size)()
        n = int(llama.llama_state_seq_get_data(self._ctx, buf, size, seq_id))
        if n > 0:
            blob = _state_one_stream(bytes(memoryview(buf)[:n]), self.n_seq, seq_id)
            if blob is not None:
                self.cache.put("prompts", key, struct.pack("<i", n_past), blob)

    # -- generation --

    def _prepare(self, request: Request) -> _Prepared:
        mt = native.mtmd()
        no_think = request.settings.think_budget == 0
        chunks = self._tokenize_prompt(self._prompt_text(request), request.images)
        n_chunks = int(mt.mtmd_input_chunks_size(chunks))
        image_chunks = [
            i for i in range(n_chunks)
            if mt.mtmd_input_chunk_get_type(mt.mtmd_input_chunks_get(chunks, i)) == mt.MTMD_INPUT_CHUNK_TYPE_IMAGE
        ]
        image_tokens = [int(mt.mtmd_input_chunk_get_n_tokens(mt.mtmd_input_chunks_get(chunks, i)))
                        for i in image_chunks]
        keys, ends = self._chunk_keys(chunks, n_chunks)
        return _Prepared(request, chunks, int(mt.mtmd_helper_get_n_pos(chunks)), n_chunks, image_chunks,
                         image_tokens, no_think, keys, ends)

    def _prefill(self, prep: _Prepared, seq_id: int, timings: dict[str, float],
                 cached: dict[str, int]) -> Generator[Event, None, int]:
        """Evaluate the prompt into ``seq_id`` (from the caches where they hold it); return n_past."""
        llama = native.llama()
        mt = native.mtmd()
        if prep.n_prompt >= self.n_ctx:
            raise ContextError(
                f"the prompt needs {prep.n_prompt} tokens ({sum(prep.image_tokens)} for images) "
                f"but the context holds {self.n_ctx}",
                hint="raise --ctx, or lower --image-max-tokens or the number of images/frames",
            )
        chunks, n_chunks = prep.chunks, prep.n_chunks
        n_images = len(prep.image_chunks)
        boundary = prep.image_chunks[-1] if prep.image_chunks else None
        reused = self._reuse_resident(prep, seq_id)
        self._resident.pop(seq_id, None)  # what it holds changes now; recorded again once the prompt is in
        start = reused
        n_past = prep.ends[reused - 1] if reused else 0
        cached["prefix_tokens"] = n_past
        prefix_key = None
        if self.cache is not None and self.cache.enabled and boundary is not None and reused <= boundary:
            prefix_key = self._prefix_key(prep.keys, boundary)
            yield PhaseEvent("prefill", 0, n_images)
            t0 = time.perf_counter()
            restored = self._restore_prefix(prefix_key, seq_id)
            if restored is not None:
                timings["cache_s"] += time.perf_counter() - t0
                start, n_past = boundary + 1, restored
                cached["prefix_tokens"] = restored
            elif reused:  # a failed restore leaves the sequence empty: take the reused part again
                start = self._reuse_resident(prep, seq_id)
                n_past = prep.ends[start - 1] if start else 0
                cached["prefix_tokens"] = n_past
        new_n_past = llama.llama_pos(0)
        seen_images = sum(1 for i in prep.image_chunks if i < start)
        for i in range(start, n_chunks):
            chunk = mt.mtmd_input_chunks_get(chunks, i)
            last = i == n_chunks - 1
            new_n_past.value = n_past  # the text helper adds to it rather than setting it
            if mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                seen_images += 1
                n_tok = int(mt.mtmd_input_chunk_get_n_tokens(chunk))
                n_floats = n_tok * self.n_embd
                key = self._image_key(chunk) if self.cache is not None or self._pre_encoded else None
                ahead = self._pre_encoded.pop(key, None) if key else None
                hit = self.cache.get("embeddings", key) if self.cache is not None and key and not ahead else None
                if ahead is not None and len(ahead[0]) == n_floats * 4:
                    # encoded while the model loaded: the encoder's work, done early
                    yield PhaseEvent("encode", seen_images, n_images)
                    embd = ctypes.cast((ctypes.c_float * n_floats).from_buffer_copy(ahead[0]),
                                       ctypes.POINTER(ctypes.c_float))
                    timings["encode_s"] += ahead[1]
                    if self.cache is not None and key:
                        self.cache.put("embeddings", key, struct.pack("<ii", n_tok, self.n_embd), ahead[0])
                elif hit is not None and len(hit[1]) == n_floats * 4:
                    embd = ctypes.cast((ctypes.c_float * n_floats).from_buffer_copy(hit[1]),
                                       ctypes.POINTER(ctypes.c_float))
                    cached["images"] += 1
                else:
                    yield PhaseEvent("encode", seen_images, n_images)
                    t0 = time.perf_counter()
                    if mt.mtmd_encode_chunk(self._mctx, chunk) != 0:
                        raise EngineError(f"the vision encoder failed on image {seen_images}: {native.last_error()}")
                    embd = mt.mtmd_get_output_embd(self._mctx)
                    timings["encode_s"] += time.perf_counter() - t0
                    if self.cache is not None and key:
                        self.cache.put("embeddings", key, struct.pack("<ii", n_tok, self.n_embd),
                                       ctypes.string_at(embd, n_floats * 4))
                yield PhaseEvent("prefill", seen_images, n_images)
                t0 = time.perf_counter()
                self._sync_threads()
                rc = mt.mtmd_helper_decode_image_chunk(
                    self._mctx, self._ctx, chunk, embd, n_past, seq_id, self.config.n_batch,
                    ctypes.byref(new_n_past), mt.mtmd_helper_post_decode_callback(), None,
                )
                timings["prefill_s"] += time.perf_counter() - t0
            else:
                if i == 0 or last:
                    yield PhaseEvent("prefill", seen_images, n_images)
                t0 = time.perf_counter()
                self._sync_threads()
                rc = mt.mtmd_helper_eval_chunk_single(
                    self._mctx, self._ctx, chunk, n_past, seq_id, self.config.n_batch, last,
                    ctypes.byref(new_n_past),
                )
                timings["prefill_s"] += time.perf_counter() - t0
            if rc != 0:
                raise EngineError(f"llama.cpp failed to evaluate the prompt (code {rc}): {native.last_error()}")
            n_past = int(new_n_past.value)
            if i == boundary and prefix_key is not None:
                t0 = time.perf_counter()
                self._save_prefix(prefix_key, seq_id, n_past)
                timings["cache_s"] += time.perf_counter() - t0
        self._resident[seq_id] = (prep.keys, prep.ends)
        return n_past

    def generate(self, request: Request) -> Iterator[Event]:
        """Run one request; yields PhaseEvent/TextEvent and finally DoneEvent; errors raise.

        Ctrl-C (KeyboardInterrupt) during generation ends the request with
        ``finish_reason="interrupted"``: the DoneEvent still arrives with what was generated.
        """
        for _, ev in self.generate_many([request]):
            if isinstance(ev, FailedEvent):
                raise ev.error
            yield ev

    def generate_many(self, requests: Iterable[Request], parallel: int | None = None) -> Iterator[tuple[int, AnyEvent]]:
        """Run requests, up to ``parallel`` at once (default: every sequence of every lane).

        Each request is encoded and prefilled on its own (the first token is sampled at once); then
        every running request of a context gets one token per ``llama_decode``: one batch carries a
        token for each, so generating N answers together costs far less than N times one. With
        several lanes (``EngineConfig.lanes``, CPU batches), each lane runs its own requests in its
        own thread with its share of the cores. Yields ``(index, event)``; a request that fails
        yields ``FailedEvent`` and the others go on. Each sequence has its own ``n_ctx`` cells.
        Requests are pulled from ``requests`` (always on the calling thread) only when a sequence
        is free.
        """
        total = parallel or self.n_seq * len(self._lanes)
        if len(self._lanes) == 1 or total <= 1:
            # the other lanes are idle: this one's decodes take every core (its encoder keeps its own)
            self._want_threads = self.threads * len(self._lanes)
            yield from self._generate_lane(enumerate(requests), min(total, self.n_seq))
        else:
            yield from self._generate_lanes(iter(enumerate(requests)), total)

    def _generate_lanes(self, source: Iterator[tuple[int, Request]], total: int) -> Iterator[tuple[int, AnyEvent]]:
        """Several lanes, a thread each; requests and events pass through queues, so the caller's
        code (reading images, rendering) runs on the calling thread only."""
        lanes = self._lanes[:min(len(self._lanes), total)]
        per_lane = max(1, min(self.n_seq, -(-total // len(lanes))))
        cores = self.threads * len(self._lanes)
        events: queue.Queue[tuple[str, int, Any]] = queue.Queue()
        inboxes: list[queue.Queue[tuple[int, Request] | None]] = [queue.Queue() for _ in lanes]
        stop = threading.Event()

        def work(k: int, lane: Engine) -> None:
            def feed() -> Iterator[tuple[int, Request]]:
                while True:
                    events.put(("need", k, None))
                    item = inboxes[k].get()
                    if item is None:
                        return
                    yield item

            gen = lane._generate_lane(feed(), per_lane)
            thrown = False
            try:
                while True:
                    if stop.is_set() and not thrown:
                        thrown = True  # Ctrl-C: the lane ends its answers as interrupted, text kept
                        item = gen.throw(KeyboardInterrupt())
                    else:
                        item = next(gen)
                    events.put(("event", k, item))
            except (StopIteration, KeyboardInterrupt):
                pass
            except BaseException as exc:  # a bug: the caller re-raises it
                events.put(("crash", k, exc))
            finally:
                gen.close()
                events.put(("end", k, None))

        for lane in lanes:
            lane._want_threads = self.threads
        workers = [threading.Thread(target=work, args=(k, lane), name=f"kvl-lane-{k}", daemon=True)
                   for k, lane in enumerate(lanes)]
        for t in workers:
            t.start()
        running = set(range(len(lanes)))
        exhausted = False

        def handle(kind: str, k: int, item: Any) -> Iterator[tuple[int, AnyEvent]]:
            nonlocal exhausted
            if kind == "need":
                nxt = None if exhausted or stop.is_set() else next(source, None)
                exhausted = exhausted or nxt is None
                inboxes[k].put(nxt)
            elif kind == "event":
                yield item
            elif kind == "crash":
                raise item
            else:
                running.discard(k)
                for j in running:  # the lanes still busy take the finished one's cores
                    lanes[j]._want_threads = max(1, cores // len(running))

        try:
            try:
                while running:
                    yield from handle(*events.get())
            except KeyboardInterrupt:
                stop.set()
                for box in inboxes:
                    box.put(None)
                while running:
                    yield from handle(*events.get())
        finally:
            stop.set()
            for box in inboxes:
                box.put(None)
            for t in workers:
                t.join()
            for lane in lanes:
                lane._want_threads = self.threads

    def _sync_threads(self) -> None:
        """Before a decode: take the threads this lane is meant to use now."""
        want = self._want_threads or self.threads
        if want != (self._threads_now or self.threads):
            native.llama().llama_set_n_threads(self._ctx, want, want)
            self._threads_now = want

    def _generate_lane(self, source: Iterable[tuple[int, Request]],
                       slots: int) -> Generator[tuple[int, AnyEvent], None, None]:
        llama = native.llama()
        slots = max(1, min(slots, self.n_seq))
        source = iter(source)  # pulled one at a time: a long batch is never all in memory
        exhausted = False

        def pull() -> tuple[int, Request, _Prepared | None] | None:
            nonlocal exhausted
            nxt = None if exhausted else next(source, None)
            exhausted = nxt is None
            return None if nxt is None else (nxt[0], nxt[1], None)

        waiting: tuple[int, Request, _Prepared | None] | None = None
        free = list(range(slots))
        free.reverse()
        active: list[_Seq] = []
        cap = slots * 64
        batch = llama.llama_batch_init(cap, 0, 1)
        try:
            while True:
                # admit what fits
                while free:
                    if waiting is None:
                        waiting = pull()
                        if waiting is None:
                            break
                    index, request, prep = waiting
                    if prep is None:
                        try:
                            prep = self._prepare(request)
                        except KvlError as exc:
                            waiting = None
                            yield index, FailedEvent(exc)
                            continue
                        waiting = (index, request, prep)
                    waiting = None
                    seq_id = free.pop()
                    seq = _Seq(index, seq_id, request.settings, prep)
                    try:
                        try:
                            seq.n_past = yield from self._tag(index, self._prefill(prep, seq_id, seq.timings,
                                                                                   seq.cached))
                        finally:
                            native.mtmd().mtmd_input_chunks_free(prep.chunks)
                    except KvlError as exc:
                        self._forget(seq_id)
                        free.append(seq_id)
                        yield index, FailedEvent(exc)
                        continue
                    except KeyboardInterrupt:
                        self._forget(seq_id)
                        yield from self._interrupt_all(active)
                        raise
                    seq.sampler = self._new_sampler(request.settings)
                    yield index, PhaseEvent("generate")
                    seq.t_gen = time.perf_counter()
                    yield from self._tag(index, self._step_seq(seq, -1))
                    if seq.finish:
                        yield from self._retire(seq, free)
                    else:
                        active.append(seq)
                if not active:
                    if waiting is None and exhausted:
                        break
                    continue
                try:
                    n = 0
                    where: dict[int, int] = {}
                    for seq in active:
                        for j, tok in enumerate(seq.feed):
                            if n >= cap:
                                raise EngineError("internal batch overflow")
                            batch.token[n] = tok
                            batch.pos[n] = seq.n_past + j
                            batch.n_seq_id[n] = 1
                            batch.seq_id[n][0] = seq.seq_id
                            batch.logits[n] = 1 if j == len(seq.feed) - 1 else 0
                            n += 1
                        where[seq.seq_id] = n - 1
                    batch.n_tokens = n
                    self._sync_threads()
                    rc = llama.llama_decode(self._ctx, batch)
                    if rc != 0:
                        err = EngineError(f"llama.cpp failed to decode (code {rc}): {native.last_error()}")
                        for seq in active:
                            self._forget(seq.seq_id)
                            free.append(seq.seq_id)
                            self._free_sampler(seq)
                            yield seq.index, FailedEvent(err)
                        active.clear()
                        continue
                    for seq in active:
                        seq.n_past += len(seq.feed)
                        seq.feed = []
                    for seq in list(active):
                        yield from self._tag(seq.index, self._step_seq(seq, where[seq.seq_id]))
                        if seq.finish:
                            active.remove(seq)
                            yield from self._retire(seq, free)
                except KeyboardInterrupt:
                    yield from self._interrupt_all(active)
                    return
        finally:
            llama.llama_batch_free(batch)
            for seq in active:
                self._free_sampler(seq)
            if waiting is not None and waiting[2] is not None:
                native.mtmd().mtmd_input_chunks_free(waiting[2].chunks)

    @staticmethod
    def _tag(index: int, gen: Iterator[Event]) -> Generator[tuple[int, Event], None, Any]:
        """Yield ``gen``'s events tagged with ``index``; return what ``gen`` returns."""
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            yield index, ev

    def _interrupt_all(self, active: list[_Seq]) -> Iterator[tuple[int, AnyEvent]]:
        for seq in active:
            seq.finish = "interrupted"
            yield from self._tag(seq.index, self._flush(seq))
            yield seq.index, DoneEvent(self._result(seq))
            self._free_sampler(seq)
        active.clear()

    def _retire(self, seq: _Seq, free: list[int]) -> Iterator[tuple[int, AnyEvent]]:
        llama = native.llama()
        yield from self._tag(seq.index, self._flush(seq))
        yield seq.index, DoneEvent(self._result(seq))
        self._free_sampler(seq)
        # keep the prompt's cells (a later request may share its start); drop the generated ones
        llama.llama_memory_seq_rm(llama.llama_get_memory(self._ctx), seq.seq_id, seq.prep.n_prompt, -1)
        free.append(seq.seq_id)

    def _forget(self, seq_id: int) -> None:
        """Empty a sequence's cells."""
        llama = native.llama()
        llama.llama_memory_seq_rm(llama.llama_get_memory(self._ctx), seq_id, -1, -1)
        self._resident.pop(seq_id, None)

    def _new_sampler(self, s: GenerationSettings) -> Any:
        llama = native.llama()
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        if s.temperature <= 0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
        else:
            if s.top_k > 0:
                llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_k(s.top_k))
            if s.top_p < 1.0:
                llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_p(s.top_p, 1))
            if s.min_p > 0:
                llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_min_p(s.min_p, 1))
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_temp(s.temperature))
            seed = s.seed if s.seed is not None else 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: random
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_dist(seed))
        return chain

    @staticmethod
    def _free_sampler(seq: _Seq) -> None:
        if seq.sampler:
            native.llama().llama_sampler_free(seq.sampler)
            seq.sampler = None

    def _step_seq(self, seq: _Seq, logits_index: int) -> Iterator[Event]:
        """Sample one token for ``seq`` from its logits; stream it; decide what to feed next."""
        llama = native.llama()
        s = seq.settings
        if seq.generated >= s.max_tokens:
            seq.finish = "length"
            return
        if seq.n_past >= self.n_ctx:
            seq.finish = "context"
            return
        token = int(llama.llama_sampler_sample(seq.sampler, self._ctx, logits_index))
        if llama.llama_vocab_is_eog(self._vocab, token) or token == self._im_end:
            seq.finish = "stop"
            return
        seq.generated += 1
        splitter = seq.splitter
        phase_before = splitter.phase
        text = seq.decoder.decode(self._piece(token))
        for phase, delta in splitter.feed(text):
            yield TextEvent(phase, delta)
        # a token that completes the closing marker still belongs to the thinking
        in_answer = phase_before is Phase.ANSWER or (phase_before is Phase.START and splitter.phase is Phase.ANSWER)
        seq.counts["answer" if in_answer else "thinking"] += 1
        if seq.counts["thinking"] and "think_s" not in seq.timings and splitter.phase is Phase.ANSWER:
            seq.timings["think_s"] = time.perf_counter() - seq.t_gen
        if phase_before is Phase.THINKING:
            seq.thought += 1  # what the budget counts: tokens after the opening marker
        seq.feed = [token]
        if seq.generated >= s.max_tokens:
            seq.finish = "length"  # no need to evaluate a token nothing will follow
            return
        if s.think_budget is not None and splitter.phase is Phase.THINKING and seq.thought >= s.think_budget:
            # budget spent: close the thinking ourselves and let the answer follow
            seq.budget_hit = True
            for phase, delta in splitter.close_thinking():
                yield TextEvent(phase, delta)
            seq.timings["think_s"] = time.perf_counter() - seq.t_gen
            close = self.tokenize(THINK_CLOSE)
            if seq.n_past + 1 + len(close) >= self.n_ctx:
                seq.finish = "context"
                return
            seq.feed += close

    def _flush(self, seq: _Seq) -> Iterator[Event]:
        tail = seq.decoder.decode(b"", final=True)
        for phase, delta in seq.splitter.feed(tail) + seq.splitter.flush():
            yield TextEvent(phase, delta)

    def _result(self, seq: _Seq) -> Result:
        seq.timings["generate_s"] = time.perf_counter() - seq.t_gen if seq.t_gen else 0.0
        prep = seq.prep
        tokens = {
            "prompt": prep.n_prompt,
            "image": sum(prep.image_tokens),
            "thinking": seq.counts["thinking"],
            "answer": seq.counts["answer"],
            "generated": seq.generated,
        }
        return Result(
            answer=seq.splitter.answer, thinking=seq.splitter.thinking, finish_reason=seq.finish or "stop",
            tokens=tokens, timings={k: round(v, 3) for k, v in seq.timings.items()},
            image_tokens=prep.image_tokens, think_budget_hit=seq.budget_hit, cached=dict(seq.cached),
        )


class _Side:
    """A function run on another thread; ``join`` returns its result or raises its exception."""

    def __init__(self, fn: Any) -> None:
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="kvl-load", daemon=True)
        self._thread.start()

    def _run(self, fn: Any) -> None:
        try:
            self._result = fn()
        except BaseException as exc:
            self._error = exc

    def join(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


# A sequence's saved state is [u32 magic][i32 seq id][u32 n_streams][a section per stream], a stream
# that does not hold the sequence being just its u32 cell count, 0. The cache stores the one-stream
# form, so that a prompt evaluated in a parallel batch (one stream per sequence) serves a single
# question later, and the reverse. A layout that does not look like that is not cached.
_STATE_HEAD = 12


def _state_one_stream(blob: bytes, n_streams: int, seq_id: int) -> bytes | None:
    if len(blob) < _STATE_HEAD or struct.unpack_from("<I", blob, 8)[0] != n_streams:
        return None
    stream = seq_id if n_streams > 1 else 0
    start = _STATE_HEAD + 4 * stream
    end = len(blob) - 4 * (n_streams - 1 - stream)
    if end <= start or any(blob[_STATE_HEAD:start]) or any(blob[end:]):
        return None
    return blob[:4] + struct.pack("<iI", 0, 1) + blob[start:end]


def _state_for_stream(blob: bytes, n_streams: int, seq_id: int) -> bytes:
    if len(blob) < _STATE_HEAD or struct.unpack_from("<I", blob, 8)[0] != 1 or n_streams == 1:
        return blob
    return (blob[:4] + struct.pack("<iI", seq_id, n_streams) + bytes(4 * seq_id) + blob[_STATE_HEAD:]
            + bytes(4 * (n_streams - 1 - seq_id)))


@dataclass
class _Prepared:
    request: Request
    chunks: Any
    n_prompt: int
    n_chunks: int
    image_chunks: list[int]
    image_tokens: list[int]
    no_think: bool
    keys: list[str]  # per chunk: hash of everything up to it (see _chunk_keys)
    ends: list[int]  # per chunk: the position after it


class _Seq:
    """One request being generated: its sequence in the KV cache, sampler and stream state."""

    def __init__(self, index: int, seq_id: int, settings: GenerationSettings, prep: _Prepared) -> None:
        self.index = index
        self.seq_id = seq_id
        self.settings = settings
        self.prep = prep
        self.sampler: Any = None
        self.splitter = ReasoningSplitter(start_in_answer=prep.no_think)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.counts = {"thinking": 0, "answer": 0}
        self.generated = 0
        self.thought = 0
        self.budget_hit = False
        self.finish: str | None = None
        self.feed: list[int] = []
        self.n_past = 0
        self.t_gen = 0.0
        # cache_s: reading and writing the disk cache (prompt state restore and save)
        self.timings: dict[str, float] = {"encode_s": 0.0, "prefill_s": 0.0, "generate_s": 0.0, "cache_s": 0.0}
        self.cached: dict[str, int] = {"images": 0, "prefix_tokens": 0}


# ---- measurements (``kvl bench``) --------------------------------------------------------------


def bench_encode(engine: Engine, image: ImageInput) -> tuple[int, float]:
    """Encode one image with the vision tower only; return (image tokens, seconds)."""
    mt = native.mtmd()
    chunks = engine._tokenize_prompt(engine.marker, [image])
    try:
        for i in range(int(mt.mtmd_input_chunks_size(chunks))):
            chunk = mt.mtmd_input_chunks_get(chunks, i)
            if mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                t0 = time.perf_counter()
                if mt.mtmd_encode_chunk(engine._mctx, chunk) != 0:
                    raise EngineError(f"the vision encoder failed: {native.last_error()}")
                return int(mt.mtmd_input_chunk_get_n_tokens(chunk)), time.perf_counter() - t0
    finally:
        mt.mtmd_input_chunks_free(chunks)
    raise EngineError("no image chunk")


def bench_decode(engine: Engine, n_prompt: int, n_gen: int, parallel: int = 1, seed: int = 0) -> tuple[float, float]:
    """llama-bench's pp/tg on the loaded context: ``n_prompt`` tokens in one batch per sequence, then,
    from an empty context again, ``n_gen`` steps of one token per sequence. Returns (prefill tok/s,
    generation tok/s), counting all ``parallel`` sequences."""
    import random

    llama = native.llama()
    rnd = random.Random(seed)
    n_vocab = int(llama.llama_vocab_n_tokens(engine._vocab))
    parallel = max(1, min(parallel, engine.n_seq))
    for s in range(parallel):
        engine._forget(s)
    cap = max(n_prompt, parallel)
    batch = llama.llama_batch_init(cap, 0, 1)
    try:
        def run(entries: list[tuple[int, int, int]]) -> None:
            for j, (tok, pos, seq) in enumerate(entries):
                batch.token[j] = tok
                batch.pos[j] = pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq
                batch.logits[j] = 1 if j == len(entries) - 1 else 0
            batch.n_tokens = len(entries)
            if llama.llama_decode(engine._ctx, batch) != 0:
                raise EngineError(f"llama.cpp failed to decode: {native.last_error()}")

        t_pp = 0.0
        for s in range(parallel):
            entries = [(rnd.randrange(n_vocab), p, s) for p in range(n_prompt)]
            t0 = time.perf_counter()
            for k in range(0, n_prompt, engine.config.n_batch):
                run(entries[k:k + engine.config.n_batch])
            llama.llama_synchronize(engine._ctx)
            t_pp += time.perf_counter() - t0
        # like llama-bench's tg: from an empty context
        for s in range(parallel):
            engine._forget(s)
        t0 = time.perf_counter()
        for step in range(n_gen):
            run([(rnd.randrange(n_vocab), step, s) for s in range(parallel)])
        llama.llama_synchronize(engine._ctx)
        t_tg = time.perf_counter() - t0
    finally:
        llama.llama_batch_free(batch)
        for s in range(parallel):
            engine._forget(s)
    return n_prompt * parallel / t_pp, n_gen * parallel / t_tg
