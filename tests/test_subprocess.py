"""The installed ``kvl`` as a real process: in a pipe, and interrupted with Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from kvl_cli.synthetic import SCRIPTED_ANSWER

from .conftest import kvl_env


def test_real_process_in_a_pipe(scripted, images):
    r = subprocess.run([sys.executable, "-m", "kvl_cli", "caption", str(images["jpg"])],
                       capture_output=True, text=True, env=kvl_env(scripted), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == SCRIPTED_ANSWER + "\n"
    assert r.stderr == ""  # no native logs, no progress when stderr is not a terminal


def test_ctrl_c_keeps_what_was_printed_and_exits_130(random_pair, images):
    # the random model generates until the limit: long enough to interrupt
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvl_cli", "caption", str(images["jpg"]), "--no-think", "--temperature", "0",
         "--max-tokens", "2000000", "--ctx", "1000000", "--image-max-tokens", "16"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kvl_env(random_pair),
    )
    first = proc.stdout.read(1)  # the answer has started streaming
    assert first
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert len(first + out) > 10  # what was streamed before Ctrl-C is kept
    assert b"interrupted" in err
    assert b"Traceback" not in err
