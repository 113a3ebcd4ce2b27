"""The slash commands of ``kvl chat``: each a function of the chat's state and its argument that
says what it did (a line for stderr) or raises a ``KvlError`` (an error line; the chat goes on).

``//text`` is the text ``/text`` (a question that starts with a slash)."""

from __future__ import annotations

import contextlib
import enum
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KvlError, UsageError
from ..schema import AnswerSchema, choices_schema, load_schema
from .conversation import Conversation
from .media import Budget, MediaItem, attach

HELP = """\
/add PATH|URL     attach an image, a video or a PDF to your next question
/drop N           remove media item N (numbered in the order they were added)
/clear            start over: forget every turn and attachment
/think on|off|N   thinking without limit, none, or at most N tokens
/schema FILE|JSON the next answer follows this JSON Schema
/choices a,b      the next answer is one of these
/save FILE        write the conversation (.json, or .md to read; kvl chat --resume FILE.json)
/help             this list
/exit             end the chat (Ctrl-D too)
//text            send "/text" as a question"""


class Action(enum.Enum):
    CONTINUE = "continue"
    EXIT = "exit"


@dataclass
class ChatState:
    """What the commands change: the conversation, the next answer's shape, where media loads."""

    conv: Conversation
    budget: Budget
    answer: AnswerSchema | None = None  # for the next answer only (/schema, /choices)
    default_answer: AnswerSchema | None = None  # for every answer (--schema, --choices)
    loader: Callable[[str, Budget], MediaItem] = attach
    notes: list[str] = field(default_factory=list)


def is_command(line: str) -> bool:
    return line.startswith("/") and not line.startswith("//")


def question_text(line: str) -> str:
    """The question a line asks: ``//text`` stands for ``/text``."""
    return line[1:] if line.startswith("//") else line


def dropped_path(arg: str) -> str:
    """A file name as typed, or as a terminal drops a file in: quoted (``'my photo.jpg'``) or with its
    spaces escaped (``my\\ photo.jpg``); a name that exists as typed is taken as it is."""
    arg = arg.strip()
    if not arg or arg.startswith(("http://", "https://")) or Path(arg).expanduser().exists():
        return arg
    try:
        parts = shlex.split(arg)
    except ValueError:  # an unbalanced quote: the name as typed
        return arg
    return parts[0] if len(parts) == 1 else arg


def _add(state: ChatState, arg: str) -> str:
    item = state.loader(dropped_path(arg), state.budget)
    state.conv.pending.append(item)
    return f"added {item.label} as item {len(state.conv.media())}; it goes with your next question"


def _drop(state: ChatState, arg: str) -> str:
    if not arg.strip():
        raise UsageError("/drop needs the number of a media item", hint="/drop N, N as /add numbered it")
    try:
        number = int(arg)
    except ValueError:
        raise UsageError(f"/drop {arg}: not a number", hint="/drop N, N as /add numbered it") from None
    item = state.conv.drop(number)
    return f"dropped item {number}: {item.label}"


def _clear(state: ChatState, arg: str) -> str:
    state.conv.clear()
    state.answer = None
    return "cleared: a new conversation"


def _think(state: ChatState, arg: str) -> str:
    word = arg.strip().lower()
    if not word:
        raise UsageError("/think needs on, off or a number", hint="/think on, /think off or /think 256")
    if word == "on":
        state.conv.think_budget = -1
        return "thinking on, without a limit"
    if word == "off":
        state.conv.think_budget = 0
        return "thinking off"
    if word.isdigit():
        state.conv.think_budget = int(word)
        return f"thinking at most {int(word)} tokens" if int(word) else "thinking off"
    raise UsageError(f"/think {arg}: not on, off or a number", hint="/think on, /think off or /think 256")


def _schema(state: ChatState, arg: str) -> str:
    if not arg.strip():
        raise UsageError("/schema needs a JSON Schema or a file holding one", hint='/schema {"type": "object"}')
    with _as_command("/schema", "--schema"):
        state.answer = load_schema(arg.strip())
    return "the next answer follows the schema"


def _choices(state: ChatState, arg: str) -> str:
    if not arg.strip():
        raise UsageError("/choices needs the choices", hint="/choices yes,no")
    with _as_command("/choices", "--choices"):
        state.answer = choices_schema(arg.strip())
    return "the next answer is one of: " + ", ".join(c.strip() for c in arg.split(",") if c.strip())


@contextlib.contextmanager
def _as_command(command: str, flag: str) -> Iterator[None]:
    """The schema module's errors name the flag (``--schema``); here the user typed the command."""
    try:
        yield
    except KvlError as exc:
        exc.message = exc.message.replace(flag, command)
        exc.hint = exc.hint.replace(flag, command) if exc.hint else exc.hint
        exc.args = (exc.message,)
        raise


def _save(state: ChatState, arg: str) -> str:
    if not arg.strip():
        raise UsageError("/save needs a file name", hint="/save chat.json (or chat.md)")
    path = Path(dropped_path(arg))
    state.conv.save(path)
    return f"saved to {path}"


def _help(state: ChatState, arg: str) -> str:
    return HELP


COMMANDS: dict[str, Callable[[ChatState, str], str]] = {
    "/add": _add, "/drop": _drop, "/clear": _clear, "/think": _think, "/schema": _schema, "/choices": _choices,
    "/save": _save, "/help": _help,
}
EXIT_WORDS = ("/exit", "/quit")


def run_command(state: ChatState, line: str) -> tuple[Action, str]:
    """Do what ``line`` (a slash command) asks: (whether the chat goes on, what to say). Raises
    ``KvlError`` for a command that failed or does not exist."""
    name, _, arg = line.strip().partition(" ")
    name = name.lower()
    if name in EXIT_WORDS:
        return Action.EXIT, ""
    handler = COMMANDS.get(name)
    if handler is None:
        raise UsageError(f"unknown command {name}",
                         hint="/help lists the commands; //text sends a line starting with /")
    return Action.CONTINUE, handler(state, arg)


__all__ = ["HELP", "Action", "ChatState", "KvlError", "is_command", "question_text", "run_command"]
