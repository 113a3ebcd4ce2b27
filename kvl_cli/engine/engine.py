"""The engine: Kimi-VL through libmtmd and llama.cpp's low-level API, streaming events.

One ``Engine`` loads the text model and its projector once and serves many requests. A request
is a list of chat messages whose user text holds one media marker per image; ``generate``
encodes the images, prefills the prompt, samples with llama.cpp's native sampler chain and
yields events: phases with progress, thinking and answer deltas, and a final ``Done``.
"""

from __future__ import annotations

import codecs
import ctypes
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ContextError, EngineError, ModelError
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
    n_ctx: int = 16384
    n_batch: int = 2048
    n_ubatch: int = 512
    n_threads: int | None = None  # None: physical cores
    n_gpu_layers: int = -1  # -1: all layers when a GPU backend exists
    image_min_tokens: int | None = None  # None: libmtmd's default for the projector (8)
    image_max_tokens: int | None = None  # None: libmtmd's default for the projector (1024)
    repack: bool = False  # llama.cpp's extra CPU buffer types; abort on this graph (see README)
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


@dataclass
class DoneEvent:
    result: Result


Event = PhaseEvent | TextEvent | DoneEvent


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

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._model: Any = None
        self._ctx: Any = None
        self._mctx: Any = None
        self._sampler: Any = None
        self.load_seconds = 0.0
        self.warnings = check_model_pair(config.model, config.mmproj)
        self._load()

    # -- loading --

    def _load(self) -> None:
        cfg = self.config
        native.install_log_router(cfg.verbose)
        llama = native.llama()
        mt = native.mtmd()
        t0 = time.perf_counter()
        llama.llama_backend_init()
        threads = cfg.n_threads or native.physical_cores()
        gpu = native.gpu_offload_supported()

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

        cparams = llama.llama_context_default_params()
        cparams.n_ctx = cfg.n_ctx
        cparams.n_batch = cfg.n_batch
        cparams.n_ubatch = min(cfg.n_ubatch, cfg.n_batch)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        ctx = llama.llama_init_from_model(model, cparams)
        if not ctx:
            self.close()
            raise EngineError(
                f"llama.cpp could not create a context of {cfg.n_ctx} tokens: {native.last_error('unknown error')}",
                hint="lower --ctx (less memory) or --gpu-layers",
            )
        self._ctx = ctx
        self.n_ctx = int(llama.llama_n_ctx(ctx))

        mp = mt.mtmd_context_params_default()
        mp.use_gpu = gpu and cfg.n_gpu_layers != 0
        mp.n_threads = threads
        mp.print_timings = cfg.verbose
        mp.warmup = False  # the first real image allocates what it needs; a warm-up only costs time on CPU
        if cfg.image_min_tokens is not None:
            mp.image_min_tokens = cfg.image_min_tokens
        if cfg.image_max_tokens is not None:
            mp.image_max_tokens = cfg.image_max_tokens
        self._marker_bytes = mt.mtmd_default_marker()
        mctx = mt.mtmd_init_from_file(str(cfg.mmproj).encode(), model, mp)
        if not mctx:
            self.close()
            raise ModelError(
                f"libmtmd could not load the projector {cfg.mmproj.name}: {native.last_error('unknown error')}",
                hint="use the mmproj file that belongs to this model",
            )
        self._mctx = mctx
        if not mt.mtmd_support_vision(mctx):
            self.close()
            raise ModelError(f"{cfg.mmproj.name} has no vision encoder", hint="use the model's image projector")
        self.threads = threads
        self.gpu = bool(mp.use_gpu)
        self._im_end = self._special_token("<|im_end|>")
        self._template = self._chat_template()
        self.load_seconds = time.perf_counter() - t0

    @property
    def marker(self) -> str:
        """The placeholder that marks where an image goes in ``Request.user_text``."""
        return str(self._marker_bytes.decode("utf-8"))

    def _special_token(self, text: str) -> int | None:
        toks = self.tokenize(text, special=True)
        return toks[0] if len(toks) == 1 else None

    def _chat_template(self) -> bytes | None:
        llama = native.llama()
        tmpl = llama.llama_model_chat_template(self._model, None)
        return bytes(tmpl) if tmpl else None

    def close(self) -> None:
        llama = native.llama()
        mt = native.mtmd()
        if self._sampler:
            llama.llama_sampler_free(self._sampler)
            self._sampler = None
        if self._mctx:
            mt.mtmd_free(self._mctx)
            self._mctx = None
        if self._ctx:
            llama.llama_free(self._ctx)
            self._ctx = None
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

    def format_prompt(self, request: Request, *, prefill: str = "") -> str:
        """The chat prompt, from the model's own template (llama.cpp applies it)."""
        llama = native.llama()
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
        n = llama.llama_chat_apply_template(self._template, arr, len(msgs), True, buf, size)
        if n < 0:
            # the model carries no template llama.cpp recognises: use Kimi-VL's format
            text = "".join(
                f"<|im_{'system' if r == 'system' else 'user'}|>{r}<|im_middle|>{c}<|im_end|>" for r, c in msgs
            ) + "<|im_assistant|>assistant<|im_middle|>"
        else:
            if n > size:
                buf = ctypes.create_string_buffer(n + 1)
                n = llama.llama_chat_apply_template(self._template, arr, len(msgs), True, buf, n + 1)
            text = buf.raw[:n].decode("utf-8")
        return text + prefill

    # -- generation --

    def _make_sampler(self, s: GenerationSettings) -> Any:
        llama = native.llama()
        if self._sampler:
            llama.llama_sampler_free(self._sampler)
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
        self._sampler = chain
        return chain

    def _tokenize_prompt(self, prompt: str, images: list[ImageInput]) -> Any:
        mt = native.mtmd()
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
            rc = mt.mtmd_tokenize(self._mctx, chunks, ctypes.byref(text), arr, len(bitmaps))
        finally:
            for bmp in bitmaps:
                mt.mtmd_bitmap_free(bmp)
        if rc != 0:
            mt.mtmd_input_chunks_free(chunks)
            why = {1: "the number of images does not match the image markers in the prompt",
                   2: "an image could not be preprocessed"}.get(rc, f"error {rc}")
            raise EngineError(f"libmtmd could not tokenize the prompt: {why}")
        return chunks

    def generate(self, request: Request) -> Iterator[Event]:
        """Run one request; yields PhaseEvent/TextEvent and finally DoneEvent.

        Ctrl-C (KeyboardInterrupt) during generation ends the request with
        ``finish_reason="interrupted"``: the DoneEvent still arrives with what was generated.
        """
        llama = native.llama()
        mt = native.mtmd()
        s = request.settings
        no_think = s.think_budget == 0
        prompt = self.format_prompt(request, prefill=(THINK_OPEN + THINK_CLOSE) if no_think else "")
        timings = {"encode_s": 0.0, "prefill_s": 0.0, "generate_s": 0.0}
        image_tokens: list[int] = []
        chunks = self._tokenize_prompt(prompt, request.images)
        mem = llama.llama_get_memory(self._ctx)
        llama.llama_memory_clear(mem, True)
        try:
            n_prompt = int(mt.mtmd_helper_get_n_pos(chunks))
            n_chunks = int(mt.mtmd_input_chunks_size(chunks))
            image_chunks = [
                i for i in range(n_chunks)
                if mt.mtmd_input_chunk_get_type(mt.mtmd_input_chunks_get(chunks, i)) == mt.MTMD_INPUT_CHUNK_TYPE_IMAGE
            ]
            for i in image_chunks:
                image_tokens.append(int(mt.mtmd_input_chunk_get_n_tokens(mt.mtmd_input_chunks_get(chunks, i))))
            if n_prompt >= self.n_ctx:
                raise ContextError(
                    f"the prompt needs {n_prompt} tokens ({sum(image_tokens)} for images) "
                    f"but the context holds {self.n_ctx}",
                    hint="raise --ctx, or lower --image-max-tokens or the number of images/frames",
                )
            n_past = 0
            new_n_past = llama.llama_pos(0)
            seen_images = 0
            for i in range(n_chunks):
                chunk = mt.mtmd_input_chunks_get(chunks, i)
                last = i == n_chunks - 1
                if mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    seen_images += 1
                    yield PhaseEvent("encode", seen_images, len(image_chunks))
                    t0 = time.perf_counter()
                    if mt.mtmd_encode_chunk(self._mctx, chunk) != 0:
                        raise EngineError(f"the vision encoder failed on image {seen_images}: {native.last_error()}")
                    embd = mt.mtmd_get_output_embd(self._mctx)
                    timings["encode_s"] += time.perf_counter() - t0
                    yield PhaseEvent("prefill", seen_images, len(image_chunks))
                    t0 = time.perf_counter()
                    rc = mt.mtmd_helper_decode_image_chunk(
                        self._mctx, self._ctx, chunk, embd, n_past, 0, self.config.n_batch,
                        ctypes.byref(new_n_past), mt.mtmd_helper_post_decode_callback(), None,
                    )
                    timings["prefill_s"] += time.perf_counter() - t0
                else:
                    if i == 0 or last:
                        yield PhaseEvent("prefill", seen_images, len(image_chunks))
                    t0 = time.perf_counter()
                    rc = mt.mtmd_helper_eval_chunk_single(
                        self._mctx, self._ctx, chunk, n_past, 0, self.config.n_batch, last, ctypes.byref(new_n_past)
                    )
                    timings["prefill_s"] += time.perf_counter() - t0
                if rc != 0:
                    raise EngineError(f"llama.cpp failed to evaluate the prompt (code {rc}): {native.last_error()}")
                n_past = int(new_n_past.value)
        finally:
            mt.mtmd_input_chunks_free(chunks)

        yield from self._sample(s, n_past, n_prompt, image_tokens, timings, no_think)

    def _sample(self, s: GenerationSettings, n_past: int, n_prompt: int, image_tokens: list[int],
                timings: dict[str, float], no_think: bool) -> Iterator[Event]:
        llama = native.llama()
        sampler = self._make_sampler(s)
        splitter = ReasoningSplitter(start_in_answer=no_think)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        counts = {"thinking": 0, "answer": 0}
        generated = 0
        budget_hit = False
        thought = 0
        finish = "stop"
        token_arr = (llama.llama_token * 1)()
        yield PhaseEvent("generate")
        t_gen = time.perf_counter()
        try:
            while True:
                if generated >= s.max_tokens:
                    finish = "length"
                    break
                if n_past >= self.n_ctx:
                    finish = "context"
                    break
                token = int(llama.llama_sampler_sample(sampler, self._ctx, -1))
                if llama.llama_vocab_is_eog(self._vocab, token) or token == self._im_end:
                    break
                generated += 1
                phase_before = splitter.phase
                text = decoder.decode(self._piece(token))
                for phase, delta in splitter.feed(text):
                    yield TextEvent(phase, delta)
                # a token that completes the closing marker still belongs to the thinking
                in_answer = phase_before is Phase.ANSWER or (
                    phase_before is Phase.START and splitter.phase is Phase.ANSWER)
                counts["answer" if in_answer else "thinking"] += 1
                if phase_before is Phase.THINKING:
                    thought += 1  # what the budget counts: tokens after the opening marker
                token_arr[0] = token
                if llama.llama_decode(self._ctx, llama.llama_batch_get_one(token_arr, 1)) != 0:
                    raise EngineError(f"llama.cpp failed to decode (n_past={n_past}): {native.last_error()}")
                n_past += 1
                if (s.think_budget is not None and splitter.phase is Phase.THINKING
                        and thought >= s.think_budget):
                    # budget spent: close the thinking ourselves and let the answer follow
                    budget_hit = True
                    for phase, delta in splitter.close_thinking():
                        yield TextEvent(phase, delta)
                    close = self.tokenize(THINK_CLOSE)
                    if n_past + len(close) >= self.n_ctx:
                        finish = "context"
                        break
                    arr = (llama.llama_token * len(close))(*close)
                    if llama.llama_decode(self._ctx, llama.llama_batch_get_one(arr, len(close))) != 0:
                        raise EngineError(f"llama.cpp failed to decode: {native.last_error()}")
                    n_past += len(close)
        except KeyboardInterrupt:
            finish = "interrupted"
        tail = decoder.decode(b"", final=True)
        for phase, delta in splitter.feed(tail) + splitter.flush():
            yield TextEvent(phase, delta)
        timings["generate_s"] = time.perf_counter() - t_gen
        tokens = {
            "prompt": n_prompt,
            "image": sum(image_tokens),
            "thinking": counts["thinking"],
            "answer": counts["answer"],
            "generated": generated,
        }
        yield DoneEvent(Result(
            answer=splitter.answer, thinking=splitter.thinking, finish_reason=finish, tokens=tokens,
            timings={k: round(v, 3) for k, v in timings.items()}, image_tokens=image_tokens,
            think_budget_hit=budget_hit,
        ))
