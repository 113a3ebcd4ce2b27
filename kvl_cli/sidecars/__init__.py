"""Sidecars: each answer written into a file beside its input (or under ``--sidecar-dir``), where
training-set builders (``photo.txt``), scripts (``photo.json``: the ``--json`` record) and photo
managers (``photo.xmp``) read it.

* Written atomically (a temporary file in the same folder, then renamed); the image is never
  opened for writing.
* The sidecar is the resume mark: an input whose sidecars kvl already wrote (for the same task) is
  skipped on a rerun, before the model loads; ``--overwrite`` runs it again.
* kvl replaces only its own sidecars of the same task: a sidecar that is someone else's (a tool's
  ``photo.json``, a hand-written ``photo.txt``) or another task's fails its input, and none of the
  input's sidecars is written (never a mixed set), unless ``--overwrite``. What a sidecar holds is
  always readable XML and text (``xmp.xml_text``).
* ``SidecarWriter`` is a ``RecordSink`` (``render.tee``): any command that renders records plugs it
  in with ``with_sidecars(renderer, options, task)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..engine.types import Result
from ..errors import DiskError, InputError, KvlError, UsageError
from ..options import SidecarOptions
from ..render import Renderer
from ..render.stream import result_record
from ..render.tee import RecordTee
from ..safetext import json_safe
from . import xmp
from .paths import KINDS, is_url, sidecar_path

__all__ = ["KINDS", "SidecarWriter", "conflicts", "pending", "sidecar_path", "with_sidecars"]

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
        meta = {**meta, "task": meta.get("task", self.task)}
        page = meta.get("page") if isinstance(meta.get("page"), int) else None
        paths, existing = self.check(label, page)  # again: another program may have written one meanwhile
        for kind, path in paths.items():
            data = self._content(kind, path, existing[kind], label, result, meta, date)
            try:
                write_atomic(path, data)
            except OSError as exc:
                raise DiskError(f"{label}: cannot write {path}: {exc.strerror or exc}",
                                hint="use --sidecar-dir DIR for read-only media, or free some space") from None

    def check(self, label: str, page: int | None = None) -> tuple[dict[str, Path], dict[str, bytes | None]]:
        """The input's sidecar paths (``.txt`` last) and what is there now; KvlError where they cannot be
        written as asked: one is someone else's or another task's (without ``--overwrite``), an XMP
        that does not parse, a FIFO, a folder. Every one is checked before any is written: never a
        mixed set. Checked before the run (``conflicts``) and again when the answer is written."""
        paths = {kind: sidecar_path(label, kind, self.options.folder, page)
                 for kind in _marks_first(self.options.kinds)}
        try:
            existing = {kind: _read_existing(path) for kind, path in paths.items()}
        except KvlError as exc:
            raise type(exc)(f"{label}: {exc.message}", hint=exc.hint) from None
        for kind, path in paths.items():
            if not self.options.overwrite:
                self._check_replaceable(label, kind, path, existing[kind], page)
            data = existing[kind]
            if kind == "xmp" and data is not None:
                try:
                    xmp.parse(data)
                except xmp.XmpError as exc:
                    raise InputError(f"{label}: {path} is not XMP kvl can merge into: {exc}",
                                     hint="kvl leaves it as it is: repair it or move it aside") from None
        return paths, existing

    def _check_replaceable(self, label: str, kind: str, path: Path, data: bytes | None,
                           page: int | None = None) -> None:
        """InputError where an existing sidecar is not kvl's of this task (a tool's ``photo.json``, a
        caption kvl wrote where OCR is asked for, a hand-written ``photo.txt``): kvl replaces none of
        them without ``--overwrite``."""
        if data is None:
            return
        if kind == "txt":
            tasks = self._marked_tasks(label, page)
            why = None if self.task in tasks else (
                f"kvl's {'/'.join(sorted(tasks))} sidecars are beside it" if tasks else "kvl cannot tell who wrote it")
        elif kind == "json":
            task = _json_task(data)
            why = None if task == self.task else (f"it holds kvl's {task} record" if task else "it is not kvl's record")
        else:
            task = xmp.kvl_task(data)  # an XMP kvl has not written into is merged (a photographer's fields kept)
            why = None if task in (None, self.task) else f"it holds kvl's {str(task)[:40]}"
        if why is not None:
            raise InputError(f"{label}: {path} is already there and {why}",
                             hint="--overwrite replaces it, or --sidecar-dir DIR writes kvl's sidecars elsewhere")

    def _marked_tasks(self, label: str, page: int | None = None) -> set[str]:
        """The tasks of kvl's marked sidecars (``.json``, ``.xmp``) of this input that are there."""
        tasks = set()
        for kind in ("json", "xmp"):
            try:
                data = _read_existing(sidecar_path(label, kind, self.options.folder, page))
            except KvlError:
                continue
            task = None if data is None else (_json_task(data) if kind == "json" else xmp.kvl_task(data))
            if task:
                tasks.add(task)
        return tasks

    def _content(self, kind: str, path: Path, existing: bytes | None, label: str, result: Result,
                 meta: dict[str, Any], date: str) -> bytes:
        if kind == "txt":
            return (xmp.xml_text(result.answer.strip()) + "\n").encode("utf-8", "replace")
        if kind == "json":
            record = {**result_record(label, result, meta), "date": date}
            return (json_safe(json.dumps(record, ensure_ascii=False)) + "\n").encode("utf-8")
        fields = {"task": str(meta["task"]), "model": str(meta.get("model", "")), "date": date, "version": _version()}
        try:
            return xmp.merge(existing, result.answer.strip(), fields)
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
        return _json_task(data) == self.task


def _marks_first(kinds: tuple[str, ...]) -> list[str]:
    """``.txt`` (which carries no mark) written last: a run stopped between two writes leaves a marked
    sidecar, which a rerun knows as kvl's, never a lone ``.txt`` it cannot tell from someone else's."""
    return sorted(kinds, key=lambda kind: kind == "txt")


def _json_task(data: bytes) -> str | None:
    """The task of the successful kvl record a ``.json`` sidecar holds (None: not one)."""
    try:
        rec = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(rec, dict) or rec.get("error") is not None or not isinstance(rec.get("input"), str):
        return None
    task = rec.get("task")
    return task[:40] if isinstance(task, str) and task and "answer" in rec else None  # said in a message: short


def _version() -> str:
    """kvl's version, from its installed metadata (the package's face imports the whole library)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kvl")
    except PackageNotFoundError:
        return "unknown"


def _read_existing(path: Path) -> bytes | None:
    """The sidecar at ``path`` (None: there is none). What is not a plain file is never opened: a FIFO
    would wait for a writer forever, a device never end."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DiskError(f"cannot read {path}: {exc.strerror or exc}", hint="check its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise DiskError(f"cannot write {path}: a folder is there", hint="move it aside, or use --sidecar-dir DIR")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path} is there and is not a plain file (a FIFO, a device)",
                         hint="move it aside, or use --sidecar-dir DIR")
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
    # a short name: the sidecar's own may be near the longest a folder allows
    fd, tmp = tempfile.mkstemp(prefix=".kvl-", suffix=".tmp", dir=path.parent)
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
    """An existing sidecar's read and write permissions (its own, not a link's target's; never set-id or
    execute bits), else what a new file gets under the umask (not mkstemp's 0600)."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return st.st_mode & 0o666
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def pending(labels: list[str], options: SidecarOptions, task: str) -> list[bool]:
    """For each input, whether it still has to run (False: its sidecars are there). Checked before
    any work, as usage errors: an input with no place for a sidecar (stdin, a URL without
    ``--sidecar-dir``), two inputs that would write the same sidecar (``a.jpg`` and ``a.png``), a
    sidecar that would replace an input (``scan.txt`` with ``--sidecar txt``; ``a.jpg``'s ``a.json``
    given as an input too), a ``--sidecar-dir`` that is not a folder."""
    _check_folder(options.folder)
    inputs = _Inputs(labels)
    seen: dict[Path, str] = {}
    for label in labels:
        for kind in options.kinds:
            path = sidecar_path(label, kind, options.folder)
            other = seen.setdefault(path, label)
            if other != label:
                raise UsageError(f"--sidecar: {other} and {label} would both write {path}",
                                 hint="caption them in two runs with different --sidecar-dir")
            if (hit := inputs.at(path)) is not None:
                raise UsageError(f"--sidecar {kind}: {label}'s sidecar {path} would replace the input {hit}",
                                 hint="rename the input, or write the sidecars elsewhere with --sidecar-dir DIR")
    _check_pages(labels, options)
    writer = SidecarWriter(options, task)
    return [not writer.done(label) for label in labels]


_PAGE_STEM = re.compile(r"^(.+)\.p([1-9][0-9]*)$")
DOCUMENT_SUFFIXES = (".pdf", ".tif", ".tiff")  # inputs that may have pages (a TIFF of one page has none)


def _check_pages(labels: list[str], options: SidecarOptions) -> None:
    """A document's pages write ``doc.p3.txt``: an image whose own sidecar has that name
    (``doc.p3.png`` beside ``doc.pdf``) would write it first, and the page would be skipped as done."""
    stems: dict[tuple[Path, str], str] = {}
    if not options.kinds:
        return
    for label in labels:
        if Path(label).suffix.lower() in DOCUMENT_SUFFIXES:
            with contextlib.suppress(UsageError):  # stdin, a URL: said by the loop above
                path = sidecar_path(label, options.kinds[0], options.folder)
                stems.setdefault((path.parent, path.stem), label)
    if not stems:
        return
    for label in labels:
        if Path(label).suffix.lower() in DOCUMENT_SUFFIXES:
            continue
        for kind in options.kinds:
            path = sidecar_path(label, kind, options.folder)
            m = _PAGE_STEM.match(path.stem)
            doc = stems.get((path.parent, m.group(1))) if m else None
            if m and doc is not None:
                raise UsageError(f"--sidecar {kind}: {label}'s sidecar {path} is also page {m.group(2)}'s of {doc}",
                                 hint="rename the image, or run the two separately with different --sidecar-dir")


def conflicts(labels: list[str], options: SidecarOptions, task: str) -> dict[str, InputError]:
    """The inputs whose sidecars cannot be written as asked (see ``SidecarWriter.check``), each with why:
    found before the model loads, so that such an input fails in its place at once instead of after
    its answer. A folder or an unreadable file where a sidecar goes is said when it is written."""
    writer = SidecarWriter(options, task)
    found: dict[str, InputError] = {}
    for label in labels:
        try:
            writer.check(label)
        except InputError as exc:
            found[label] = exc
        except KvlError:
            pass
    return found


def _check_folder(folder: str | None) -> None:
    if folder is not None and not folder.strip():  # --sidecar-dir "$UNSET"
        raise UsageError("--sidecar-dir is empty", hint="give a folder, e.g. --sidecar-dir captions")
    if folder is None:
        return
    where = os.path.expanduser(folder)
    if os.path.lexists(where) and not os.path.isdir(where):
        raise UsageError(f"--sidecar-dir {folder} is not a folder", hint="give a folder (made if it is missing)")
    try:  # made now: a folder that cannot be made fails before the model loads, not once per input
        os.makedirs(where, exist_ok=True)
    except OSError as exc:
        raise DiskError(f"cannot make --sidecar-dir {folder}: {exc.strerror or exc}",
                        hint="give a folder you can write") from None


class _Inputs:
    """The inputs as files (their paths and what they are on disk), to find a sidecar that is one."""

    def __init__(self, labels: list[str]) -> None:
        self.names: dict[str, str] = {}
        self.files: dict[tuple[int, int], str] = {}
        for label in labels:
            if is_url(label) or label == "-":
                continue
            self.names[os.path.normpath(os.path.abspath(os.path.expanduser(label)))] = label
            with contextlib.suppress(OSError):
                st = os.stat(os.path.expanduser(label))
                self.files[(st.st_dev, st.st_ino)] = label

    def at(self, path: Path) -> str | None:
        """The input that ``path`` names (the same name, or a link to the same file), else None."""
        found = self.names.get(os.path.normpath(os.path.abspath(path)))
        if found is None:
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                found = self.files.get((st.st_dev, st.st_ino))
        return found
