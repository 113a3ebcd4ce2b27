"""The prompt: chat template (or Kimi-VL's format when the model carries none llama.cpp knows),
tokenization with the images, and the chunk keys that caches and KV reuse match on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..cache import file_identity, make_key
from .handles import Model, apply_chat_template
from .media_handles import Chunk, Chunks, Projector
from .reasoning import THINK_CLOSE, THINK_OPEN
from .types import DEFAULT_SYSTEM_PROMPT, EngineConfig, Request


def kimi_format(messages: list[tuple[str, str]]) -> str:
    """Kimi-VL's chat format, written out: the fallback when llama.cpp does not know the template."""
    return "".join(
        f"<|im_{'system' if r == 'system' else 'user'}|>{r}<|im_middle|>{c}<|im_end|>" for r, c in messages
    ) + "<|im_assistant|>assistant<|im_middle|>"


def format_prompt(request: Request, template: bytes | None) -> str:
    """The chat prompt from the model's own template, ending where the assistant starts; with no
    thinking (``think_budget == 0``) an empty thinking block is already written there."""
    system = request.system if request.system is not None else DEFAULT_SYSTEM_PROMPT
    messages = [("system", system), ("user", request.user_text)]
    text = apply_chat_template(template, messages)
    if text is None:
        text = kimi_format(messages)
    if request.settings.think_budget == 0:
        text += THINK_OPEN + THINK_CLOSE
    return text


def chunk_keys(chunks: Chunks) -> tuple[list[str], list[int]]:
    """For each chunk: a hash of every token and image up to it, and the position after it."""
    h = hashlib.sha256()
    keys: list[str] = []
    ends: list[int] = []
    pos = 0
    for chunk in chunks:
        if chunk.is_image:
            h.update(b"I" + (chunk.id or "").encode() + str(chunk.n_tokens).encode())
        else:
            h.update(b"T" + chunk.text_bytes())
        pos += chunk.n_pos
        keys.append(h.hexdigest())
        ends.append(pos)
    return keys, ends


@dataclass
class PreparedPrompt:
    """A request's prompt, tokenized: what prefill evaluates and the caches match on."""

    request: Request
    chunks: Chunks
    keys: list[str]  # per chunk: hash of everything up to it (see chunk_keys)
    ends: list[int]  # per chunk: the position after it

    @property
    def n_prompt(self) -> int:
        return self.ends[-1] if self.ends else 0

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    @property
    def image_chunks(self) -> list[int]:
        return [i for i, c in enumerate(self.chunks) if c.is_image]

    @property
    def image_tokens(self) -> list[int]:
        return [c.n_tokens for c in self.chunks if c.is_image]

    @property
    def no_think(self) -> bool:
        return self.request.settings.think_budget == 0

    def close(self) -> None:
        self.chunks.close()


def prepare(request: Request, model: Model, projector: Projector, template: bytes | None = None) -> PreparedPrompt:
    """Format and tokenize ``request`` (with ``template``, default the model's own)."""
    prompt = format_prompt(request, template if template is not None else model.chat_template())
    chunks = projector.tokenize(prompt, request.images)
    keys, ends = chunk_keys(chunks)
    return PreparedPrompt(request, chunks, keys, ends)


class CacheKeys:
    """Disk-cache keys: every key names the model files (path, size, mtime), llama-cpp-python's
    version and the image token limits, so a re-pulled model or another budget never matches."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._identity: tuple[str, str, str] | None = None

    def identity(self) -> tuple[str, str, str]:
        if self._identity is None:
            import llama_cpp

            self._identity = (file_identity(self.config.model), file_identity(self.config.mmproj),
                              str(llama_cpp.__version__))
        return self._identity

    def image(self, chunk: Chunk) -> str:
        """An image's embeddings: its pixels (the chunk id), token count, projector and limits."""
        _, proj, version = self.identity()
        return make_key("embd", proj, version, chunk.id, chunk.n_tokens,
                        self.config.image_min_tokens, self.config.image_max_tokens)

    def prefix(self, prep: PreparedPrompt, upto: int) -> str:
        """Every token and image of chunks[0..upto], plus the files and library that evaluated them."""
        return make_key("prefix", *self.identity(), self.config.image_min_tokens, self.config.image_max_tokens,
                        prep.keys[upto])
