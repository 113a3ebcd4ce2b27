"""Fixtures: toy Kimi-VL pairs written by the suite, generated images, isolation, a kvl runner.

Every test runs with its own KVL_HOME/HOME/XDG dirs and with sockets limited to loopback, so no
test touches the user's files or the network.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvl_cli.environment import Environment
from kvl_cli.synthetic import write_projector, write_toy_pair

REPO = Path(__file__).resolve().parent.parent


# ---- isolation ----------------------------------------------------------------------------------

_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address):  # type: ignore[no-untyped-def]
    host = address[0] if isinstance(address, tuple) else address
    local = isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1"))
    if local or self.family == socket.AF_UNIX:
        return _real_connect(self, address)
    raise OSError(f"network access blocked in tests: {address!r}")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KVL_HOME", str(home / "kvl"))
    for var in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    for var in ("KVL_MODEL", "KVL_MMPROJ", "KVL_DEBUG", "KVL_AUTO_PULL", "KVL_REPACK", "HF_TOKEN", "HF_ENDPOINT",
                "HF_HUB_OFFLINE", "NO_COLOR", "KVL_MAX_IMAGE_PIXELS", "KVL_CATALOG",
                "KVL_MAX_INPUT_BYTES", "KVL_SANDBOX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    return home


# ---- toy models --------------------------------------------------------------------------------


@dataclass
class Pair:
    model: Path
    mmproj: Path

    def args(self) -> list[str]:
        return ["--model", str(self.model), "--mmproj", str(self.mmproj)]


@pytest.fixture(scope="session")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    model, mmproj = write_toy_pair(tmp_path_factory.mktemp("scripted"), scripted=True)
    return Pair(model, mmproj)


@pytest.fixture(scope="session")
def random_pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    model, mmproj = write_toy_pair(tmp_path_factory.mktemp("random"), scripted=False, seed=7)
    return Pair(model, mmproj)


@pytest.fixture(scope="session")
def narrow_projector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A projector whose output (32) does not fit the toy model's width (64)."""
    return write_projector(tmp_path_factory.mktemp("narrow") / "mmproj-narrow.gguf", text_n_embd=32)


# ---- images ------------------------------------------------------------------------------------


def make_image(path: Path, size: tuple[int, int] = (96, 64), color: tuple[int, ...] = (200, 40, 40),
               mode: str = "RGB", **save: object) -> Path:
    from PIL import Image

    Image.new(mode, size, color).save(path, **save)
    return path


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "img"
    d.mkdir()
    return {
        "jpg": make_image(d / "red.jpg"),
        "png": make_image(d / "alpha.png", mode="RGBA", color=(0, 0, 255, 100)),
        "webp": make_image(d / "green.webp", color=(0, 200, 0)),
        "bmp": make_image(d / "gray.bmp", color=(90, 90, 90)),
        "tiff": make_image(d / "cmyk.tiff", mode="CMYK", color=(10, 20, 30, 0)),
    }


@pytest.fixture
def photos(tmp_path: Path) -> Callable[[int], list[str]]:
    """``photos(n)``: n small PNGs, each of its own size and colour (p00.png, p01.png, ... in a folder of
    their own), their paths as strings, the way a command line and a record carry them."""
    folders = 0

    def make(n: int) -> list[str]:
        nonlocal folders
        folders += 1
        d = tmp_path / ("photos" if folders == 1 else f"photos{folders}")
        d.mkdir()
        return [str(make_image(d / f"p{i:02d}.png", size=(64 + 4 * i, 48), color=(9 * i, 80, 200 - 7 * i)))
                for i in range(n)]

    return make


# ---- running kvl -----------------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def kvl(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run the real ``kvl`` entry point in-process; stdout/stderr captured at the fd level, so a
    native log line that escapes to fd 2 shows up in ``err``."""
    from kvl_cli.cli import main

    def run(*args: str, stdin: bytes | None = None) -> Run:
        capfd.readouterr()
        env = Environment(stdin=io.BytesIO(stdin), stdin_isatty=False) if stdin is not None else None
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args], env=env)
        out, err = capfd.readouterr()
        return Run(int(exc.value.code or 0), out, err)

    return run


def kvl_env(pair: Pair | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVL_MODEL", "KVL_MMPROJ"))}
    if pair is not None:
        env["KVL_MODEL"], env["KVL_MMPROJ"] = str(pair.model), str(pair.mmproj)
    env.update(extra)
    return env


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A 64 KiB tmpfs (root only: skipped where it cannot be mounted)."""
    where = tmp_path / "fs"
    where.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                                                   capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
