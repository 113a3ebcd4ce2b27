"""Owning wrappers around libmtmd: the vision projector and tokenized prompts (text and image chunks).

Like ``handles``, these free their native objects themselves; nothing else calls libmtmd.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import EngineError, ModelError
from . import native, stop
from .llama_handles import Context, Model, NativePtr, Owned
from .types import EngineConfig, ImageInput


def default_marker() -> str:
    """libmtmd's image placeholder in prompt text (known before any model is loaded)."""
    return str(native.mtmd().mtmd_default_marker().decode("utf-8"))


@dataclass
class Chunk:
    """A view of one chunk of a tokenized prompt (valid while its ``Chunks`` is open)."""

    ptr: NativePtr
    is_image: bool
    n_tokens: int
    n_pos: int

    @property
    def id(self) -> str | None:
        """An image chunk's id: the image's content hash (``ImageInput.id``)."""
        cid = native.mtmd().mtmd_input_chunk_get_id(self.ptr)
        return cid.decode() if cid else None

    def text_tokens(self) -> list[int]:
        n = ctypes.c_size_t(0)
        toks = native.mtmd().mtmd_input_chunk_get_tokens_text(self.ptr, ctypes.byref(n))
        return list(toks[: n.value])


class Chunks(Owned):
    """A prompt tokenized by libmtmd: text chunks and one image chunk per image."""

    def __init__(self, ptr: NativePtr) -> None:
        mt = native.mtmd()
        super().__init__(ptr, mt.mtmd_input_chunks_free)
        image_type = mt.MTMD_INPUT_CHUNK_TYPE_IMAGE
        self.items: list[Chunk] = []
        for i in range(int(mt.mtmd_input_chunks_size(ptr))):
            c = mt.mtmd_input_chunks_get(ptr, i)
            self.items.append(Chunk(c, mt.mtmd_input_chunk_get_type(c) == image_type,
                                    int(mt.mtmd_input_chunk_get_n_tokens(c)), int(mt.mtmd_input_chunk_get_n_pos(c))))

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Chunk]:
        return iter(self.items)

    def __getitem__(self, i: int) -> Chunk:
        return self.items[i]

    @property
    def n_pos(self) -> int:
        return sum(c.n_pos for c in self.items)


class Projector(Owned):
    """A libmtmd context: the vision tower and projector, with its own threads."""

    def __init__(self, config: EngineConfig, model: Model, *, threads: int, use_gpu: bool) -> None:
        mt = native.mtmd()
        params = mt.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = threads
        params.print_timings = config.verbose
        params.warmup = False  # the first real image allocates what it needs; a warm-up only costs time on CPU
        if not use_gpu:  # the encoder computes in segments and can stop between them (see ``stop``)
            params.cb_eval = stop.encoder_eval_callback()
        if config.image_min_tokens is not None:
            params.image_min_tokens = config.image_min_tokens
        if config.image_max_tokens is not None:
            params.image_max_tokens = config.image_max_tokens
        ptr = mt.mtmd_init_from_file(str(config.mmproj).encode(), model.ptr, params)
        if not ptr:
            raise ModelError(f"libmtmd could not load the projector {config.mmproj.name}: "
                             f"{native.last_error('unknown error')}",
                             hint="use the mmproj file that belongs to this model")
        super().__init__(ptr, mt.mtmd_free)
        if not mt.mtmd_support_vision(ptr):
            self.close()
            raise ModelError(f"{config.mmproj.name} has no vision encoder", hint="use the model's image projector")

    def tokenize(self, prompt: str, images: list[ImageInput]) -> Chunks:
        """Split ``prompt`` at its markers into text chunks and one image chunk per image."""
        mt = native.mtmd()
        bitmaps = [self._bitmap(img) for img in images]
        chunks = mt.mtmd_input_chunks_init()
        try:
            text = mt.mtmd_input_text()
            encoded = prompt.encode("utf-8")
            text.text = encoded
            text.text_len = len(encoded)
            text.add_special = True
            text.parse_special = True
            arr = (mt.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = mt.mtmd_tokenize(self.ptr, chunks, ctypes.byref(text), arr, len(bitmaps))
        finally:
            for bmp in bitmaps:
                mt.mtmd_bitmap_free(bmp)
        if rc != 0:
            mt.mtmd_input_chunks_free(chunks)
            why = {1: "the number of images does not match the image markers in the prompt",
                   2: "an image could not be preprocessed"}.get(rc, f"error {rc}")
            raise EngineError(f"libmtmd could not tokenize the prompt: {why}")
        return Chunks(chunks)

    @staticmethod
    def _bitmap(img: ImageInput) -> Any:
        mt = native.mtmd()
        if len(img.rgb) != img.width * img.height * 3:
            raise EngineError(f"{img.label or 'image'}: pixel buffer does not match {img.width}x{img.height} RGB")
        data = (ctypes.c_ubyte * len(img.rgb)).from_buffer_copy(img.rgb)
        bmp = mt.mtmd_bitmap_init(img.width, img.height, data)
        if not bmp:
            raise EngineError(f"libmtmd could not take {img.label or 'the image'} ({img.width}x{img.height})")
        mt.mtmd_bitmap_set_id(bmp, img.id.encode())
        return bmp

    def encode(self, chunk: Chunk, n_embd: int) -> bytes:
        """Run the vision encoder on an image chunk; its embeddings as float32 bytes.

        A long native call (10-20 s on a CPU): off the main thread, so Ctrl-C is taken at once; a
        stop ends it at its next segment (``stop``), and its unfinished output is never returned."""
        mt = native.mtmd()
        rc = stop.run_native(mt.mtmd_encode_chunk, self.ptr, chunk.ptr)
        stop.raise_if_stopped()
        if rc != 0:
            raise EngineError(native.last_error("unknown error"))
        return bytes(ctypes.string_at(mt.mtmd_get_output_embd(self.ptr), chunk.n_tokens * n_embd * 4))

    def decode_image(self, ctx: Context, chunk: Chunk, embd: bytes, n_past: int, seq_id: int, n_batch: int) -> int:
        """Evaluate an image chunk's embeddings into ``seq_id`` at ``n_past``; returns the new n_past."""
        mt = native.mtmd()
        n_floats = len(embd) // 4
        arr = ctypes.cast((ctypes.c_float * n_floats).from_buffer_copy(embd), ctypes.POINTER(ctypes.c_float))
        new_n_past = native.llama().llama_pos(n_past)
        rc = mt.mtmd_helper_decode_image_chunk(self.ptr, ctx.ptr, chunk.ptr, arr, n_past, seq_id, n_batch,
                                               ctypes.byref(new_n_past), mt.mtmd_helper_post_decode_callback(), None)
        if rc != 0:
            stop.raise_if_stopped()  # a stop aborted the decode
            raise EngineError(f"llama.cpp failed to evaluate the prompt (code {rc}): {native.last_error()}")
        return int(new_n_past.value)
