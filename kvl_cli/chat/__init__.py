"""``kvl chat``: a conversation about images and videos, the model loaded once (or a running
``kvl serve`` of the same pair answering), each follow-up evaluating only its new tokens.

``open_chat`` builds a ``Chat`` from the command's options: the media given and a resumed
conversation loaded first (a missing file costs milliseconds, not a model load), then the pair
found; the engine loads on the first turn. ``Chat.loop`` runs it on a prompt (``repl``);
``Chat.ask`` runs one turn (the library face, ``Library.chat``).
"""

from __future__ import annotations

from pathlib import Path

from ..environment import Environment
from ..options import CommonOptions
from ..render import Renderer, make_renderer
from ..run.plan import make_plan
from ..session import Session
from .conversation import Conversation, load
from .media import Budget, attach
from .repl import Chat, choose_prompt, make_chat, stderr_voice

__all__ = ["Chat", "choose_prompt", "open_chat"]


def open_chat(common: CommonOptions, media: list[str], resume: Path | None, env: Environment, *,
              session: Session | None = None, renderer: Renderer | None = None) -> Chat:
    """A chat ready for its first turn (nothing loaded yet). Raises ``KvlError`` for a bad option, a
    missing file, an unreadable conversation or a missing model."""
    plan = make_plan("ask", common, parallel=1).fit(1, 1)
    renderer = renderer or make_renderer(plan.render, env)
    session = session or Session(common.model, env=env)
    budget = Budget(plan.image_tokens, common.model.ctx, plan.settings.max_tokens)
    say, _ = stderr_voice(renderer)
    # 1) what the chat starts with, checked before a model is looked for
    conv = load(resume, lambda source: attach(source, budget), renderer.warn) if resume else Conversation()
    for source in media:
        conv.pending.append(attach(source, budget))
    # 2) the pair; its engine (or a running server) comes with the first turn
    model, mmproj, name = session.pair(renderer)
    if conv.model and conv.model != name:
        renderer.warn(f"{resume}: its answers came from {conv.model}; {name} goes on with it")
    conv.model = name
    meta: dict[str, object] = {"task": "chat", "model": name}
    factory = session.answerer(plan.engine_config(model, mmproj), renderer, meta)
    chat = make_chat(conv, factory, plan.settings, budget, renderer, meta, plan.answer)
    if conv.turns:
        say(f"resumed {resume}: {len(conv.turns)} turns, {len(conv.media())} media items")
    return chat
