"""The prompt: chat template (or Kimi-VL's format when the model carries none llama.cpp knows),
tokenization with the images, and the chunk keys that caches and KV reuse match on."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from ..cache import file_identity, make_key
from .llama_handles import Model, apply_chat_template
from .mtmd_handles import Chunk, Chunks, Projector
from .reasoning import THINK_CLOSE, THINK_OPEN
from .types import DEFAULT_SYSTEM_PROMPT, EngineConfig, Request

ROLES = ("system", "user", "assistant")


def kimi_format(messages: list[tuple[str, str]]) -> str:
    """Kimi-VL's chat format, written out: the fallback when llama.cpp does not know the template."""
    return "".join(
        f"<|im_{r if r in ROLES else 'user'}|>{r}<|im_middle|>{c}<|im_end|>" for r, c in messages
    ) + "<|im_assistant|>assistant<|im_middle|>"


def format_prompt(request: Request, template: bytes | None) -> str:
    """The chat prompt from the model's own template, ending where the assistant starts; with no
    thinking (``think_budget == 0``) an empty thinking block is already written there. Earlier turns
    (``request.messages``) come between the system prompt and the last user message."""
    system = request.system if request.system is not None else DEFAULT_SYSTEM_PROMPT
    messages = [("system", system), *request.messages, ("user", request.user_text)]
    text = apply_chat_template(template, messages)
    if text is None:
        text = kimi_format(messages)
    if request.settings.think_budget == 0:
        text += THINK_OPEN + THINK_CLOSE
    return text


# Kimi-VL was trained (its HF processor and chat template; vLLM's placeholder is the same) with each
# image as <|media_start|>image<|media_content|> + embeddings + <|media_end|>. libmtmd writes only
# <|media_start|> and <|media_end|> around the embeddings: kvl adds the rest itself.
IMAGE_OPEN = "image<|media_content|>"


@dataclass
class Segment:
    """A run of the prompt evaluated in one go: text tokens, or one image's embeddings."""

    tokens: list[int] = field(default_factory=list)  # text (empty for an image)
    image: Chunk | None = None
    image_index: int = 0  # 1-based, for an image

    @property
    def n_pos(self) -> int:
        return self.image.n_pos if self.image is not None else len(self.tokens)


def layout(chunks: Chunks, image_open: list[int]) -> list[Segment]:
    """libmtmd's chunks in Kimi-VL's trained layout: ``image_open`` after each <|media_start|>."""
    segments: list[Segment] = []
    n_images = 0
    for chunk in chunks:
        if not chunk.is_image:
            segments.append(Segment(tokens=chunk.text_tokens()))
            continue
        if not segments or segments[-1].image is not None:
            segments.append(Segment())
        segments[-1].tokens += image_open
        n_images += 1
        segments.append(Segment(image=chunk, image_index=n_images))
    return segments


def segment_keys(segments: list[Segment]) -> tuple[list[str], list[int]]:
    """For each segment: a hash of every token and image up to it, and the position after it."""
    h = hashlib.sha256()
    keys: list[str] = []
    ends: list[int] = []
    pos = 0
    for seg in segments:
        if seg.image is not None:
            h.update(b"I" + (seg.image.id or "").encode() + str(seg.image.n_tokens).encode())
        else:
            h.update(b"T" + struct.pack(f"<{len(seg.tokens)}i", *seg.tokens))
        pos += seg.n_pos
        keys.append(h.hexdigest())
        ends.append(pos)
    return keys, ends


@dataclass
class PreparedPrompt:
    """A request's prompt, tokenized and laid out: what prefill evaluates and the caches match on."""

    request: Request
    chunks: Chunks  # owns the image chunks the segments point at
    segments: list[Segment]
    keys: list[str]  # per segment: hash of everything up to it (see segment_keys)
    ends: list[int]  # per segment: the position after it

    @property
    def n_prompt(self) -> int:
        return self.ends[-1] if self.ends else 0

    @property
    def n_chunks(self) -> int:
        return len(self.segments)

    @property
    def image_chunks(self) -> list[int]:
        return [i for i, seg in enumerate(self.segments) if seg.image is not None]

    @property
    def image_tokens(self) -> list[int]:
        return [seg.image.n_tokens for seg in self.segments if seg.image is not None]

    @property
    def no_think(self) -> bool:
        return self.request.settings.think_budget == 0

    def close(self) -> None:
        self.chunks.close()


def prepare(request: Request, model: Model, projector: Projector, template: bytes | None = None) -> PreparedPrompt:
    """Format, tokenize and lay out ``request`` (with ``template``, default the model's own)."""
    prompt = format_prompt(request, template if template is not None else model.chat_template())
    chunks = projector.tokenize(prompt, request.images)
    segments = layout(chunks, model.tokenize(IMAGE_OPEN, special=True))
    keys, ends = segment_keys(segments)
    return PreparedPrompt(request, chunks, segments, keys, ends)


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
