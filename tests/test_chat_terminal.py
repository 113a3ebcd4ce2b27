"""kvl chat in a real terminal (tmux): a typed question is answered, /add attaches an image that
the next answer uses, Ctrl-C clears a line at the prompt and stops an answer (the chat goes on),
Ctrl-D ends with exit 0, and the prompt's history is kept in kvl's state folder."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kvl_cli.synthetic import SCRIPTED_ANSWER

from .conftest import kvl_env

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Tmux:
    """One kvl chat in a detached tmux session on a server of its own."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str]) -> None:
        self.socket = f"kvl-chat-{id(self)}"
        self.exit_file = tmp / "exit.txt"
        script = tmp / "chat.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()
                          if k.isidentifier())
        command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "kvl_cli", "chat", *args])
        # the shell outlives a Ctrl-C (a handler, not an ignored signal: kvl gets the default back)
        script.write_text(f"{exports}trap : INT\ncd {shlex.quote(str(tmp))}\n{command}\n"
                          f"echo \"EXIT=$?\" > {self.exit_file}\nsleep 30\n")
        self.tmux("new-session", "-d", "-s", "chat", "-x", "120", "-y", "50", f"sh {shlex.quote(str(script))}")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True,
                              text=True, timeout=30).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", "chat")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "chat", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "chat", "-l", text)

    def wait(self, check: Callable[[str], bool], timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if check(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"the screen never showed what was expected:\n{self.screen()}")

    def exit_code(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exit_file.exists() and self.exit_file.read_text().strip():
                return int(self.exit_file.read_text().strip().split("=")[1])
            time.sleep(0.1)
        raise AssertionError(f"kvl chat did not end:\n{self.screen()}")

    def close(self) -> None:
        self.tmux("kill-server")


@pytest.fixture
def term(tmp_path, isolated):  # type: ignore[no-untyped-def]
    sessions: list[Tmux] = []

    def start(pair, *args: str) -> Tmux:  # type: ignore[no-untyped-def]
        env = kvl_env(pair)
        env.pop("TMUX", None)
        env["TERM"] = "xterm-256color"
        t = Tmux(tmp_path, [*args, *pair.args()], env)
        sessions.append(t)
        return t

    yield start
    for t in sessions:
        t.close()


def at_prompt(screen: str) -> bool:
    """The last line is an empty prompt."""
    lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
    return bool(lines) and lines[-1] == "›"


def prompts(screen: str) -> int:
    return sum(1 for line in screen.splitlines() if line.startswith("›"))


def test_typed_questions_add_and_ctrl_d(term, scripted, images, isolated):
    t = term(scripted, str(images["jpg"]), "-v", "--temperature", "0")
    t.wait(lambda s: prompts(s) >= 1)
    t.type("What is it?")
    t.keys("Enter")
    screen = t.wait(lambda s: "12 image tokens (12)" in s and at_prompt(s))  # -v: the stats line after the answer
    assert SCRIPTED_ANSWER in screen
    assert "thought for" in screen  # the thinking collapsed when the answer came
    t.type(f"/add {images['webp']}")
    t.keys("Enter")
    t.wait(lambda s: "as item 2" in s and prompts(s) >= 3)
    t.type("And this one?")
    t.keys("Enter")
    screen = t.wait(lambda s: "24 image tokens (12, 12)" in s and at_prompt(s))  # the next answer used it
    assert screen.count(SCRIPTED_ANSWER) == 2
    t.type("half a line")  # Ctrl-C at the prompt clears it; the chat goes on
    t.keys("C-c")
    t.wait(lambda s: "› half a line" in s and at_prompt(s))  # a new, empty prompt (bracketed paste on again)
    # two lines pasted (bracketed paste, as a terminal pastes) are one question
    t.tmux("set-buffer", "-b", "two", "What is on the left?\nAnd on the right?")
    t.tmux("paste-buffer", "-p", "-b", "two", "-t", "chat")
    t.wait(lambda s: "And on the right?" in s)
    t.keys("Enter")
    t.wait(lambda s: s.count("24 image tokens (12, 12)") >= 2)
    time.sleep(1.0)  # a second answer (the second line as a turn of its own) would come in this time
    screen = t.screen()
    assert screen.count("24 image tokens (12, 12)") == 2 and screen.count("thought for") == 3
    t.keys("C-d")
    assert t.exit_code() == 0
    history = (isolated / "kvl" / "state" / "chat_history").read_text()
    assert "What is it?" in history and "And this one?" in history and "half a line" not in history
    assert "+What is on the left?\n+And on the right?\n" in history  # one entry of two lines


def test_ctrl_c_stops_an_answer_and_the_chat_goes_on(term, random_pair, images):
    # the random toy model greedy, no thinking, no token limit: it talks until it is stopped
    t = term(random_pair, str(images["jpg"]), "--no-think", "--temperature", "0", "--max-tokens", "100000",
             "--ctx", "65536")
    t.wait(lambda s: prompts(s) >= 1)
    t.type("Tell me everything.")
    t.keys("Enter")
    before = t.wait(lambda s: len(s.strip().splitlines()) > 3, timeout=60)
    t.keys("C-c")
    screen = t.wait(lambda s: "stopped; what was said is kept" in s and prompts(s) >= 2, timeout=30)
    assert len(screen) >= len(before.strip()) // 2  # what was streamed stays on the screen
    t.type("/exit")
    t.keys("Enter")
    assert t.exit_code() == 0


def test_ctrl_c_while_media_loads_stops_the_add_and_the_chat_goes_on(term, scripted, images, tmp_path):
    import os

    fifo = tmp_path / "never.png"
    os.mkfifo(fifo)  # nobody writes it: reading it waits for ever
    t = term(scripted, "--temperature", "0")
    t.wait(lambda s: prompts(s) >= 1)
    t.type(f"/add {fifo}")
    t.keys("Enter")
    time.sleep(1.0)
    t.keys("C-c")
    t.wait(lambda s: f"stopped: /add {fifo}" in s and at_prompt(s), timeout=20)
    t.type(f"/add {images['jpg']}")
    t.keys("Enter")
    t.wait(lambda s: "as item 1" in s and at_prompt(s))
    t.type("/exit")
    t.keys("Enter")
    assert t.exit_code() == 0
