"""``--dry-run``: the exact prompt the model would read, without loading its weights.

A vocabulary-only load of the text model and the projector are enough to tokenize and lay out a
request as ``generate`` would: special tokens are shown as text, each image as
``<image 1: 640×488 → 391 tokens>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import native
from .llama_handles import Model, backend_init
from .mtmd_handles import Projector
from .prompt import PreparedPrompt, prepare
from .types import EngineConfig, Request


@dataclass
class PromptView:
    text: str  # the prompt, special tokens as text, images as placeholders
    n_prompt: int  # tokens (positions) the prompt takes
    image_tokens: list[int]


class PromptPreview:
    """Tokenizer and projector loaded for showing prompts (no weights, no context)."""

    def __init__(self, config: EngineConfig) -> None:
        native.install_log_router(config.verbose)
        backend_init()
        self.model = Model(config.model, vocab_only=True)
        try:
            self.projector = Projector(config, self.model, threads=config.n_threads or 1, use_gpu=False)
        except BaseException:
            self.model.close()
            raise

    def view(self, request: Request) -> PromptView:
        prep = prepare(request, self.model, self.projector)
        try:
            return PromptView(render(prep, self.model), prep.n_prompt, prep.image_tokens)
        finally:
            prep.close()

    def close(self) -> None:
        self.projector.close()
        self.model.close()

    def __enter__(self) -> PromptPreview:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def render(prep: PreparedPrompt, model: Model) -> str:
    """The laid-out prompt as text: what each token says, each image as a placeholder."""
    out = []
    for seg in prep.segments:
        if seg.image is None:
            out.append(b"".join(model.piece(t, special=True) for t in seg.tokens).decode("utf-8", errors="replace"))
            continue
        img = prep.request.images[seg.image_index - 1]
        out.append(f"<image {seg.image_index}: {img.width}×{img.height} → {seg.image.n_tokens} tokens>")
    return "".join(out)
