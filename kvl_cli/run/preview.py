"""``--dry-run`` for every task: the prompt each input would give the model, and the settings."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from ..engine.dryrun import PromptPreview, PromptView
from ..engine.mtmd_handles import default_marker
from ..engine.types import EngineConfig, GenerationSettings, Request
from ..environment import Environment
from ..errors import InputError
from ..media.images import InputProblem, load_image
from ..render import Renderer
from .runner import JobOutcome, Slot, runnable, user_text


class PreviewWriter:
    """Writes one input's prompt as text (or a JSON object) on stdout."""

    def __init__(self, env: Environment, config: EngineConfig, settings: GenerationSettings, *, as_json: bool,
                 total: int) -> None:
        self.env, self.config, self.settings, self.as_json, self.total = env, config, settings, as_json, total
        self.count = 0

    def write(self, label: str, view: PromptView, meta: dict[str, Any]) -> None:
        self.count += 1
        c = self.settings.constraint
        constraint = None if c is None else {"kind": c.kind.value, "text": c.text}
        settings = {**asdict(self.settings), "constraint": constraint, "image_min_tokens": self.config.image_min_tokens,
                    "image_max_tokens": self.config.image_max_tokens, "ctx": self.config.n_ctx}
        if self.as_json:
            rec = {"input": label, **meta, "prompt": view.text, "prompt_tokens": view.n_prompt,
                   "image_tokens": view.image_tokens, "settings": settings}
            self.env.stdout.write(json.dumps(rec, ensure_ascii=False) + "\n")
        else:
            head = (("\n" if self.count > 1 else "") + f"==> {label} <==\n") if self.total > 1 else ""
            images = len(view.image_tokens)
            if c is not None:  # the whole schema is in --json; here, its kind and size
                settings["constraint"] = f"<{c.kind.value}, {len(c.text)} characters>"
            self.env.stdout.write(
                f"{head}{view.text}\n\nsettings: {' '.join(f'{k}={v}' for k, v in settings.items())}\n"
                f"prompt: {view.n_prompt} tokens, {sum(view.image_tokens)} for {images} "
                f"image{'s' if images != 1 else ''}\n")
        self.env.stdout.flush()

    def write_text_page(self, label: str, meta: dict[str, Any]) -> None:
        """A page answered by its own text (``--text-layer``): nothing goes to the model."""
        self.count += 1
        if self.as_json:
            self.env.stdout.write(json.dumps({"input": label, **meta, "prompt": None}, ensure_ascii=False) + "\n")
        else:
            head = ("\n" if self.count > 1 else "") + f"==> {_name(label, meta)} <==\n" if self.total > 1 else ""
            self.env.stdout.write(f"{head}(its own text layer: no prompt)\n")
        self.env.stdout.flush()


def _name(label: str, meta: dict[str, Any]) -> str:
    """The input as a preview's header names it (a document's page: ``doc.pdf page 3``)."""
    return f"{label} page {meta['page']}" if "page" in meta else label


def preview_jobs(slots: list[Slot], config: EngineConfig, settings: GenerationSettings, meta: dict[str, Any],
                 renderer: Renderer, env: Environment, *, as_json: bool) -> list[JobOutcome]:
    """``--dry-run`` for caption, ocr and ask: each job's prompt, in input order; the inputs that
    failed their check (already made, once, before the model was looked for) reported in their place."""
    writer = PreviewWriter(env, config, settings, as_json=as_json, total=len(runnable(slots)))
    outcomes: list[JobOutcome] = []
    with PromptPreview(config) as pp:
        for slot in slots:
            if isinstance(slot, InputProblem):
                renderer.error(slot.label, slot.error)
                outcomes.append(JobOutcome(slot.label, error=slot.error))
                continue
            if slot.text_only:  # --text-layer: the page's own text is the answer, no prompt
                writer.write_text_page(slot.label, {**meta, **slot.meta})
                outcomes.append(JobOutcome(slot.label))
                continue
            try:
                images = [load_image(ref, max_tokens=slot.image_tokens or config.image_max_tokens) for ref in slot.refs]
            except InputError as exc:
                renderer.error(slot.label, exc, page=slot.page)
                outcomes.append(JobOutcome(slot.label, error=exc))
                continue
            request = Request(user_text(default_marker(), len(images), slot.instruction, slot.image_labels), images,
                              slot.system, settings)
            writer.write(_name(slot.label, slot.meta), pp.view(request), {**meta, **slot.meta})
            outcomes.append(JobOutcome(slot.label))
    return outcomes
