"""The ``kvl`` launcher (scripts/kvl): Python cannot start with a directory on stdin, so the launcher
answers that case itself, as kvl answers bad input; everything else runs ``python -m kvl_cli``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LAUNCHERS = [REPO / "scripts" / "kvl", Path(sys.executable).parent / "kvl"]  # in the tree, and as installed


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=["tree", "installed"])
def test_a_directory_on_stdin_is_one_line_and_exit_3(launcher: Path, tmp_path: Path) -> None:
    if not launcher.exists():
        pytest.skip(f"{launcher} is not installed")
    folder = os.open(tmp_path, os.O_RDONLY)  # a directory's descriptor, as `kvl caption < dir` gives
    try:
        r = subprocess.run([str(launcher), "caption", "x.jpg"], stdin=folder, capture_output=True, text=True,
                           timeout=60)
    finally:
        os.close(folder)
    assert r.returncode == 3
    assert r.stdout == ""
    assert r.stderr.startswith("kvl: error: stdin is a directory") and r.stderr.count("\n") == 1
    assert "Fatal Python error" not in r.stderr


def test_the_installed_launcher_runs_kvl(tmp_path: Path) -> None:
    launcher = Path(sys.executable).parent / "kvl"
    if not launcher.exists():
        pytest.skip("kvl is not installed beside this Python")
    r = subprocess.run([str(launcher), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("kvl, version ")
    link = tmp_path / "kvl"  # pipx and others put a link to it on PATH: it still finds its own Python (the
    link.symlink_to(launcher)  # python3 on PATH may not have kvl installed at all)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(link), "caption", str(tmp_path / "missing.jpg")], capture_output=True, text=True,
                       timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 3 and "missing.jpg: file not found" in r.stderr
