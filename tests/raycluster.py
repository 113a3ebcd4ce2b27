"""Ray for the tests: a head node on loopback started as a user starts one, and ``kvl`` run as a
real process (the driver of a Ray job)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def kvl_proc(args: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvl_cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=240, **kw)  # type: ignore[call-overload]


@contextlib.contextmanager
def head_node(env: dict[str, str], prefix: str = "kvlr") -> Iterator[tuple[str, dict[str, str], Path]]:
    """A Ray head on loopback, 2 CPUs, with a token of its own, started as a user would (``ray start
    --head --block``, in a process group of its own: none of Ray's process-wide state in pytest's),
    its daemons in ``env``; yields (address, the env a driver joins with, its temp folder). Stopped by
    ending its process group (every daemon it started)."""
    join = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    temp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # short: Ray's socket paths live under it
    port = free_port()
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                            env={**env, **join, "RAY_USAGE_STATS_ENABLED": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_until_up(f"127.0.0.1:{port}", {**os.environ, **join}, head)
        yield f"127.0.0.1:{port}", join, temp
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(address: str, env: dict[str, str], head: subprocess.Popen[bytes]) -> None:
    """Until a driver can join (``ray status`` answers), at most a minute."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start --head ended ({head.returncode}): {head.stderr.read().decode()[-2000:]}"
                               if head.stderr else "ray start --head ended")
        if subprocess.run([str(Path(sys.executable).with_name("ray")), "status", f"--address={address}"],
                          env=env, capture_output=True).returncode == 0:
            return
        time.sleep(1)
    raise RuntimeError("the test cluster did not come up within a minute")
