"""What renderer tests feed: a fake terminal (a StringIO that says it is a TTY), and one answer as
the engine streams it (EVENTS) and as it ends (RESULT)."""

from __future__ import annotations

import io
import os
import subprocess

from kvl_cli.engine.reasoning import Section
from kvl_cli.engine.types import (
    CacheStats,
    FinishReason,
    Phase,
    PhaseEvent,
    Result,
    TextEvent,
    Timings,
    Tokens,
)

RESULT = Result(answer="It is **red**.", thinking="hmm red", finish_reason=FinishReason.STOP,
                tokens=Tokens(prompt=10, image=4, thinking=3, answer=4, generated=7),
                timings=Timings(encode_s=0.1, prefill_s=0.2, generate_s=0.3), image_tokens=[4], cached=CacheStats())
EVENTS = [PhaseEvent(Phase.ENCODE, 1, 1), PhaseEvent(Phase.PREFILL), PhaseEvent(Phase.GENERATE),
          TextEvent(Section.THINKING, "hmm"), TextEvent(Section.THINKING, " red"),
          TextEvent(Section.ANSWER, "It is "), TextEvent(Section.ANSWER, "**red**.")]


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def in_terminal(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, bytes]:
    """Run ``argv`` with stdout and stderr on a pseudo-terminal; its exit code and all it wrote there."""
    controller, terminal = os.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return proc.wait(timeout=timeout), b"".join(chunks)
