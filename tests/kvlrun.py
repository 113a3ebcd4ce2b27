"""Running ``kvl`` in the tests: as a real process (``python -m kvl_cli``) on a toy pair, the argument sets
the tests share, and reading what a run left (its JSON lines, its cache files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import kvl_env

KVL = [sys.executable, "-m", "kvl_cli"]
DISK_FULL = ("kvl: error: cannot write to stdout: No space left on device (free some space and run it again; "
             "a --json batch resumes with --skip-done OUT.jsonl)\n")
# the random toy model, greedy: long answers (kilobytes per record), the same every run
LONG = ["--no-think", "--temperature", "0", "--image-max-tokens", "16", "--max-tokens", "1500"]
# greedy and short: the same answer every run, a dozen tokens
GREEDY = ["--temperature", "0", "--no-think", "--max-tokens", "12"]


def kvl_proc(pair, args: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(KVL + args, stderr=subprocess.PIPE, text=True, env=env or kvl_env(pair), timeout=300, **kw)


def records(out: str) -> list[dict]:
    """The JSON lines of a run's output."""
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def cache_files(home: Path, kind: str) -> list[Path]:
    """The entries of one kind ("embeddings", "prompts") in the disk cache under the test's home."""
    return sorted((home / "kvl" / "cache" / kind).glob("*/*.bin"))
