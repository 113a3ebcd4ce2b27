"""Sidecars: each answer written into a file beside its input (or under ``--sidecar-dir``), where
training-set builders (``photo.txt``), scripts (``photo.json``: the ``--json`` record) and photo
managers (``photo.xmp``) read it.

* Written atomically (a temporary file in the same folder, then renamed); the image is never
  opened for writing.
* The sidecar is the resume mark: an input whose sidecars kvl already wrote (for the same task) is
  skipped on a rerun, before the model loads; ``--overwrite`` runs it again.
* ``SidecarWriter`` is a ``RecordSink`` (``render.tee``): any command that renders records plugs it
  in with ``with_sidecars(renderer, options, task)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..engine.types import Result
from ..errors import DiskError, InputError, UsageError
from ..options import SidecarOptions
from ..render import Renderer
from ..render.stream import result_record
from ..render.tee import RecordTee
from ..safetext import json_safe
from . import xmp
from .paths import KINDS, sidecar_path

__all__ = ["KINDS", "SidecarWriter", "pending", "sidecar_path", "with_sidecars"]

MAX_SIDECAR_BYTES = 16 * 1024 * 1024  # an XMP or JSON sidecar kvl reads back; larger is not one of them


def with_sidecars(renderer: Renderer, options: SidecarOptions | None, task: str) -> Renderer:
    """``renderer``, also writing each result's sidecars when ``options`` asks for any."""
    if options is None or not options.kinds:
        return renderer
    return RecordTee(renderer, [SidecarWriter(options, task)])


class SidecarWriter:
    """Writes an input's sidecars when its answer is done (see the module's docstring)."""

    def __init__(self, options: SidecarOptions, task: str) -> None:
        self.options = options
        self.task = task

    def write(self, label: str, result: Result, meta: dict[str, Any]) -> None:
        if not result.answer.strip():
            return  # no answer (cut by --max-tokens while thinking): no mark, a rerun tries again
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        page = meta.get("page") if isinstance(meta.get("page"), int) else None
        for kind in self.options.kinds:
            path = sidecar_path(label, kind, self.options.folder, page)
            data = self._content(kind, path, label, result, {**meta, "task": meta.get("task", self.task)}, date)
            try:
                write_atomic(path, data)
            except OSError as exc:
                raise DiskError(f"{label}: cannot write {path}: {exc.strerror or exc}",
                                hint="use --sidecar-dir DIR for read-only media, or free some space") from None

    def _content(self, kind: str, path: Path, label: str, result: Result, meta: dict[str, Any], date: str) -> bytes:
        if kind == "txt":
            return (result.answer.strip() + "\n").encode("utf-8", "replace")
        if kind == "json":
            record = {**result_record(label, result, meta), "date": date}
            return (json_safe(json.dumps(record, ensure_ascii=False)) + "\n").encode("utf-8")
        fields = {"task": str(meta["task"]), "model": str(meta.get("model", "")), "date": date, "version": _version()}
        try:
            return xmp.merge(_read_existing(path), result.answer.strip(), fields)
        except xmp.XmpError as exc:
            raise InputError(f"{label}: {path} is not XMP kvl can merge into: {exc}",
                             hint="kvl leaves it as it is: repair it or move it aside") from None

    def done(self, label: str, page: int | None = None) -> bool:
        """Whether kvl already wrote every sidecar asked for, for this task (the resume mark), of the
        input or of its page ``page``."""
        if self.options.overwrite:
            return False
        return all(self._written(sidecar_path(label, kind, self.options.folder, page), kind)
                   for kind in self.options.kinds)

    def _written(self, path: Path, kind: str) -> bool:
        if kind == "txt":
            return path.is_file()  # plain text carries no mark: whatever wrote it, it is not replaced
        try:
            data = _read_existing(path)
        except (DiskError, InputError):
            return False  # not readable as a sidecar: the input runs, and its write says what is wrong
        if data is None:
            return False
        if kind == "xmp":
            return xmp.kvl_task(data) == self.task
        try:
            rec = json.loads(data)
        except (ValueError, RecursionError):
            return False
        return isinstance(rec, dict) and rec.get("task") == self.task and rec.get("error") is None


def _version() -> str:
    """kvl's version, from its installed metadata (the package's face imports the whole library)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kvl")
    except PackageNotFoundError:
        return "unknown"


def _read_existing(path: Path) -> bytes | None:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SIDECAR_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DiskError(f"cannot read {path}: {exc.strerror or exc}", hint="check its permissions") from None
    if len(data) > MAX_SIDECAR_BYTES:
        raise InputError(f"{path} is larger than any sidecar ({MAX_SIDECAR_BYTES} bytes)", hint="move it aside")
    return data


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` whole or not at all: a temporary file beside it, synced, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mode(path: Path) -> int:
    """An existing sidecar's permissions, else what a new file gets under the umask (not mkstemp's 0600)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def pending(labels: list[str], options: SidecarOptions, task: str) -> list[bool]:
    """For each input, whether it still has to run (False: its sidecars are there). Checked before
    any work: an input with no place for a sidecar (stdin, a URL without ``--sidecar-dir``) and two
    inputs that would write the same sidecar (``a.jpg`` and ``a.png``) are usage errors."""
    writer = SidecarWriter(options, task)
    seen: dict[Path, str] = {}
    for label in labels:
        for kind in options.kinds:
            path = sidecar_path(label, kind, options.folder)
            other = seen.setdefault(path, label)
            if other != label:
                raise UsageError(f"--sidecar: {other} and {label} would both write {path}",
                                 hint="caption them in two runs with different --sidecar-dir")
    return [not writer.done(label) for label in labels]
