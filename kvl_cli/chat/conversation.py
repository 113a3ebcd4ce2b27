"""A conversation: its turns (question, media, answer), the media waiting for the next turn, and
the settings the slash commands change; the engine request for the next turn; save and load.

The request repeats every earlier turn (the chat template writes earlier answers without their
thinking); the engine keeps the cells of the turns already evaluated, so a follow-up evaluates only
what is new (see ``engine.prefix``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.types import GenerationSettings, ImageInput, Request
from ..errors import DiskError, InputError, KvlError
from ..limits import read_limited
from ..safetext import one_line
from .media import MediaItem

FORMAT_VERSION = 1


@dataclass
class Turn:
    question: str
    media: list[MediaItem] = field(default_factory=list)
    answer: str = ""
    thinking: str = ""
    finish_reason: str = "stop"


@dataclass
class Conversation:
    turns: list[Turn] = field(default_factory=list)
    pending: list[MediaItem] = field(default_factory=list)  # attached to the next turn
    think_budget: int | None = None  # None: the command line's; /think changes it
    system: str | None = None
    model: str | None = None  # the model's name that answered (saved: a resume with another says so)

    # -- media numbering (/drop N): every item in order, the pending ones last ------------------
    def media(self) -> list[MediaItem]:
        return [m for t in self.turns for m in t.media] + self.pending

    def drop(self, number: int) -> MediaItem:
        """Remove media item ``number`` (1-based, as ``media()`` counts) from the conversation."""
        items = self.media()
        if not 1 <= number <= len(items):
            raise InputError(f"/drop {number}: there is no media item {number}",
                             hint=f"items are numbered 1 to {len(items)}" if items else "nothing is attached")
        item = items[number - 1]
        for holder in [*(t.media for t in self.turns), self.pending]:
            if any(m is item for m in holder):
                holder[:] = [m for m in holder if m is not item]
        return item

    def clear(self) -> None:
        self.turns, self.pending = [], []

    def drop_oldest(self) -> bool:
        """Make room: forget the oldest turn's question and answer, keeping its media for the next turn
        (a later question may be about it). False when no turn is left to drop."""
        if not self.turns:
            return False
        oldest = self.turns.pop(0)
        if self.turns:
            self.turns[0].media[:0] = oldest.media
        else:
            self.pending[:0] = oldest.media
        return True

    # -- the engine request ---------------------------------------------------------------------
    def request(self, question: str, marker: str, settings: GenerationSettings) -> Request:
        """The next turn's request: every turn so far, then ``question`` after the pending media."""
        messages: list[tuple[str, str]] = []
        images: list[ImageInput] = []
        for turn in self.turns:
            messages.append(("user", _user_text(turn.media, turn.question, marker)))
            messages.append(("assistant", turn.answer))
            images += [img for m in turn.media for img in m.images]
        images += [img for m in self.pending for img in m.images]
        return Request(user_text=_user_text(self.pending, question, marker), images=images, system=self.system,
                       settings=settings, messages=messages, keep_answer=True)

    def record(self, question: str, answer: str, thinking: str, finish_reason: str) -> Turn:
        turn = Turn(question, self.pending, answer, thinking, finish_reason)
        self.turns.append(turn)
        self.pending = []
        return turn

    # -- save and load ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kvl_chat": FORMAT_VERSION, "model": self.model, "system": self.system,
                "think_budget": self.think_budget,
                "turns": [{"question": t.question, "media": [_media_dict(m) for m in t.media], "answer": t.answer,
                           "thinking": t.thinking, "finish_reason": t.finish_reason} for t in self.turns],
                "pending": [_media_dict(m) for m in self.pending]}

    def to_markdown(self) -> str:
        parts = ["# kvl chat\n"]
        for n, t in enumerate(self.turns, 1):
            media = "".join(f"\n- {m.kind}: `{m.source}`" for m in t.media)
            parts.append(f"## Turn {n}\n\n**You:** {t.question}\n{media}\n")
            if t.thinking:
                quoted = "\n".join(f"> {line}" for line in t.thinking.splitlines())
                parts.append(f"<details><summary>thinking</summary>\n\n{quoted}\n\n</details>\n")
            parts.append(f"**kvl:** {t.answer}\n")
        return "\n".join(parts)

    def save(self, path: Path) -> None:
        """JSON, or Markdown for a ``.md`` name (for reading; ``--resume`` takes the JSON). Never over a
        file that is not a conversation kvl saved (``/save photo.jpg`` for ``/add photo.jpg`` must not
        destroy the photo); written whole or not at all (a new file, then renamed over the old)."""
        text = self.to_markdown() if path.suffix.lower() in (".md", ".markdown") else \
            json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n"
        target = path.expanduser()
        _check_save_target(path, target)
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            temp.write_text(text, encoding="utf-8")
            os.replace(temp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise DiskError(f"{path}: cannot write it ({exc.strerror or exc})",
                            hint="check the folder exists and is writable") from None


SAVED_HEADS = (b'{\n "kvl_chat":', b"# kvl chat\n")  # how the files ``save`` writes begin


def _check_save_target(path: Path, target: Path) -> None:
    """InputError for a name that exists and is not a conversation ``save`` wrote."""
    if not target.exists():
        return
    if not target.is_file():
        raise InputError(f"{path}: not a file: not written over", hint="give /save a file name")
    try:
        with target.open("rb") as f:
            head = f.read(32)
    except OSError:
        head = b""
    if not head.startswith(SAVED_HEADS):
        raise InputError(f"{path}: exists and is not a conversation kvl saved: not written over",
                         hint="give /save a new name, or remove the file first")


def _user_text(media: list[MediaItem], question: str, marker: str) -> str:
    # images first, the question right after the last one: the layout Kimi-VL was trained on
    return "".join(m.text(marker) for m in media) + question


def _media_dict(m: MediaItem) -> dict[str, str]:
    """Its source as a saved file holds it: a local path made absolute (``--resume`` from another
    folder finds the same file)."""
    source = m.source
    if not source.startswith(("http://", "https://")) and source != "-":
        source = str(Path(source).expanduser().absolute())
    return {"source": source, "kind": m.kind}


MAX_SAVED_BYTES = 64 * 1000**2  # a saved conversation of thousands of turns is a few MB


def load(path: Path, reattach: Callable[[str], MediaItem], warn: Callable[[str], None]) -> Conversation:
    """A conversation saved as JSON by ``/save``; each media item is loaded again from its source
    (``reattach``; a relative path is taken from the saved file's folder); one that cannot be is left
    out, with a warning, and so is a part of the wrong type (a damaged or hand-made file)."""
    data = _read_saved(path)
    conv = Conversation(system=_saved_system(path, data.get("system"), warn),
                        think_budget=_saved_budget(path, data.get("think_budget"), warn))
    conv.model = data["model"] if isinstance(data.get("model"), str) else None
    folder = path.expanduser().parent

    def media(items: Any) -> list[MediaItem]:
        out = []
        for item in items if isinstance(items, list) else []:
            try:
                out.append(reattach(_beside(folder, item["source"])))
            except (KvlError, KeyError, TypeError) as exc:
                warn(f"{path}: media left out: {exc}")
        return out

    damaged = []
    for n, t in enumerate(data["turns"], 1):
        if not isinstance(t, dict) or not all(isinstance(t.get(k, ""), str) for k in ("question", "answer")):
            damaged.append(n)
            continue
        thinking, finish = t.get("thinking", ""), t.get("finish_reason", "stop")
        conv.turns.append(Turn(t.get("question", ""), media(t.get("media")), t.get("answer", ""),
                               thinking if isinstance(thinking, str) else "",
                               finish if isinstance(finish, str) else "stop"))
    if damaged:
        warn(f"{path}: turn{'s' if len(damaged) > 1 else ''} {', '.join(map(str, damaged))} left out: "
             "not a question and its answer")
    conv.pending = media(data.get("pending"))
    return conv


def _read_saved(path: Path) -> dict[str, Any]:
    """The saved JSON, read with a limit (``--resume /dev/zero`` must not fill the memory)."""
    hint = "--resume takes the JSON that /save writes"
    try:
        with path.expanduser().open("rb") as f:
            raw = read_limited(f, str(path), MAX_SAVED_BYTES)
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found", hint="give a conversation saved with /save FILE.json") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: not a saved conversation ({one_line(str(exc))[:200]})", hint=hint) from None
    if not isinstance(data, dict) or data.get("kvl_chat") != FORMAT_VERSION or not isinstance(data.get("turns"), list):
        raise InputError(f"{path}: not a saved kvl conversation", hint=hint)
    return data


def _saved_system(path: Path, value: Any, warn: Callable[[str], None]) -> str | None:
    if value is None or isinstance(value, str):
        return value
    warn(f"{path}: system: not text, left out")
    return None


def _saved_budget(path: Path, value: Any, warn: Callable[[str], None]) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= -1):
        return value
    warn(f"{path}: think_budget {value!r}: not on (-1), off (0) or a number of tokens, left out")
    return None


def _beside(folder: Path, source: Any) -> str:
    """A saved media source; a relative path is the saved file's neighbour, not the current folder's."""
    if not isinstance(source, str):
        raise TypeError(f"{source!r}: not a file name or URL")
    if source.startswith(("http://", "https://")) or Path(source).expanduser().is_absolute():
        return source
    return str(folder / source)
