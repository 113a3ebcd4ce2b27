"""The chat's prompt at a terminal: prompt_toolkit (line editing, a history file in kvl's state
folder, bracketed paste: several pasted lines are one turn). The answers are drawn by the live
renderer (rich), as ``kvl ask`` draws them.

Keys: Enter sends; Ctrl-C clears the line (KeyboardInterrupt, which the loop takes as "nothing");
Ctrl-D on an empty line ends the chat. A Ctrl-C while an answer streams is a SIGINT: the engine
stops that answer and keeps what was said.
"""

from __future__ import annotations

from pathlib import Path

from .. import paths

HISTORY_FILE = "chat_history"


def history_path() -> Path:
    return paths.state_dir() / HISTORY_FILE


class TerminalPrompt:
    interactive = True

    def __init__(self, history: Path | None = None) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        path = history or history_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            hist: FileHistory | InMemoryHistory = FileHistory(str(path))
        except OSError:  # a read-only home: the chat works, the history is not kept
            hist = InMemoryHistory()
        self.session: PromptSession[str] = PromptSession(history=hist, enable_history_search=True)

    def read(self) -> str | None:
        try:
            text = self.session.prompt("› ")
        except EOFError:
            return None
        text = text.strip()
        return text if text else self.read()
