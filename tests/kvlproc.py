"""``kvl`` as a real process (``python -m kvl_cli``) on a toy pair, and what the output tests expect of it."""

from __future__ import annotations

import subprocess
import sys

from .conftest import kvl_env

KVL = [sys.executable, "-m", "kvl_cli"]
DISK_FULL = ("kvl: error: cannot write to stdout: No space left on device (free some space and run it again; "
             "a --json batch resumes with --skip-done OUT.jsonl)\n")
# the random toy model, greedy: long answers (kilobytes per record), the same every run
LONG = ["--no-think", "--temperature", "0", "--image-max-tokens", "16", "--max-tokens", "1500"]


def kvl_proc(pair, args: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(KVL + args, stderr=subprocess.PIPE, text=True, env=env or kvl_env(pair), timeout=300, **kw)
