"""``file://`` images under ``--allow-files``, opened so that nothing can lead out of the folder.

Each allowed folder is opened once, when the server starts. A request's path is taken apart
(``..`` settled by its spelling) and walked component by component from that folder's descriptor
with ``O_NOFOLLOW``: no symbolic link is followed at any step, so swapping a folder on the path for
a link to somewhere else, between a check and the open, leads nowhere (there is no check apart from
the open). Only a regular file is read: a FIFO, a device or a socket is refused at once (looked at
before it is opened, and opened with ``O_NONBLOCK`` then looked at again). Errors name the path
as the request gave it, never where a link points.
"""

from __future__ import annotations

import errno
import os
import stat
import urllib.parse
from pathlib import Path

from ..limits import read_limited
from .errors import ApiError, bad_request, too_large

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class AllowedFolders:
    """The folders requests may read images from, each held open by its descriptor."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders: list[tuple[list[bytes], int]] = []
        for folder in folders:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            spellings = {_parts(os.fsencode(os.path.abspath(folder))), _parts(os.fsencode(folder.resolve()))}
            self.folders += [(list(parts), fd) for parts in spellings]

    def close(self) -> None:
        for fd in {fd for _, fd in self.folders}:
            os.close(fd)
        self.folders = []

    def read(self, url: str, where: str, cap: int) -> bytes:
        """The bytes of the file a ``file://`` URL names, within ``cap``; ApiError otherwise."""
        if not self.folders:
            raise ApiError(403, f"{where}: file:// images are off (start kvl serve with --allow-files DIR)",
                           type="permission_error", code="file_not_allowed", param=where)
        path = _path(url, where)
        parts = _parts(path)
        for folder, fd in self.folders:
            if parts == tuple(folder):
                raise bad_request(f"{where}: {_show(path)} is a directory", param=where, code="invalid_image")
            if parts[:len(folder)] == tuple(folder):
                return _read_beneath(fd, parts[len(folder):], _show(path), where, cap)
        raise _outside(_show(path), where)


def _path(url: str, where: str) -> bytes:
    """The path a ``file://`` URL names, as bytes (percent-escapes give any byte a name may hold)."""
    try:
        parsed = urllib.parse.urlsplit(url)
        path = urllib.parse.unquote_to_bytes(parsed.path)
    except (ValueError, UnicodeError):  # a lone surrogate, a bracket left open
        raise bad_request(f"{where}: not a usable file:// URL", param=where, code="invalid_image") from None
    if parsed.netloc not in ("", "localhost") or not path.startswith(b"/"):
        raise bad_request(f"{where}: a file:// URL names an absolute local path (file:///path)", param=where,
                          code="invalid_image")
    if b"\0" in path:
        raise bad_request(f"{where}: a file:// path cannot hold a NUL byte", param=where, code="invalid_image")
    return path


def _parts(path: bytes) -> tuple[bytes, ...]:
    """The components of an absolute path, ``.`` and ``..`` settled by spelling."""
    out: list[bytes] = []
    for name in path.split(b"/"):
        if name == b"..":
            if out:
                out.pop()
        elif name and name != b".":
            out.append(name)
    return tuple(out)


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def _outside(shown: str, where: str) -> ApiError:
    return ApiError(403, f"{where}: {shown} is outside the folders this server reads (--allow-files; symbolic "
                    "links are not followed)", type="permission_error", code="file_not_allowed", param=where)


def _read_beneath(root: int, names: tuple[bytes, ...], shown: str, where: str, cap: int) -> bytes:
    fd = _open_beneath(root, names, shown, where)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > cap:
            raise too_large(f"{where}: the image is over the server's limit (KVL_MAX_INPUT_BYTES where the server "
                            "runs)", code="image_too_large")
        try:
            return read_limited(f, shown, cap)
        except OSError as exc:
            raise _unreadable(shown, where, exc) from None


def _open_beneath(root: int, names: tuple[bytes, ...], shown: str, where: str) -> int:
    """A descriptor of the regular file at ``names`` below ``root``, no link followed on the way."""
    current = root
    try:
        for name in names[:-1]:
            step = _open_dir(name, current, shown, where)
            if current != root:
                os.close(current)
            current = step
        _check_regular(os.stat(names[-1], dir_fd=current, follow_symlinks=False), shown, where)
        fd = os.open(names[-1], _FILE_FLAGS, dir_fd=current)
    except OSError as exc:
        raise _open_error(exc, shown, where) from None
    finally:
        if current != root:
            os.close(current)
    try:
        _check_regular(os.fstat(fd), shown, where)
    except ApiError:
        os.close(fd)
        raise
    return fd


def _open_dir(name: bytes, parent: int, shown: str, where: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except NotADirectoryError:  # Linux's answer for a link met with O_DIRECTORY | O_NOFOLLOW
        mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode) or stat.S_ISDIR(mode):  # a link (a folder now: swapped back since)
            raise _outside(shown, where) from None
        raise


def _check_regular(st: os.stat_result, shown: str, where: str) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise _outside(shown, where)
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, a device or a socket)"
        raise bad_request(f"{where}: {shown} is {kind}", param=where, code="invalid_image")


def _open_error(exc: OSError, shown: str, where: str) -> ApiError:
    if exc.errno in (errno.ELOOP, errno.EMLINK):  # a link met with O_NOFOLLOW (EMLINK on some BSDs)
        return _outside(shown, where)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return bad_request(f"{where}: {shown}: file not found", param=where, code="invalid_image")
    return _unreadable(shown, where, exc)


def _unreadable(shown: str, where: str, exc: OSError) -> ApiError:
    return bad_request(f"{where}: {shown}: cannot read it ({exc.strerror or exc})", param=where, code="invalid_image")
