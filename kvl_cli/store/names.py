"""Where a pulled file may land: inside its model's folder under the models folder, nowhere else.

File names come from a flag the user typed (``--file``, ``--mmproj``), from a catalog, or from a
repository's listing; any of them could say ``../../.bashrc``. A name is used only when it is a
plain relative path with ``/`` between non-empty parts, none of them ``.`` or ``..``, and the path
it makes resolves inside the folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ModelError, UsageError

_DRIVE = re.compile(r"^[A-Za-z]:")
_REPO_PART = re.compile(r"\w[\w.-]*")  # as huggingface_hub validates repo ids


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a path inside a folder, or None when it can."""
    if not name:
        return "it is empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it holds control characters"
    if "\\" in name:
        return "it holds a backslash"
    if name.startswith("/"):
        return "it is an absolute path"
    if _DRIVE.match(name):
        return "it starts with a drive letter"
    parts = name.split("/")
    if ".." in parts:
        return "it climbs out with '..'"
    if "" in parts or "." in parts:
        return "it has empty or '.' parts"
    return None


def _inside(folder: Path, path: Path) -> bool:
    root, target = folder.resolve(), path.resolve()
    return target == root or root in target.parents


def check_typed_name(name: str, flag: str) -> str:
    """A file name the user typed (``--file``): a bad one is a usage error (exit 2), found before any request."""
    problem = name_problem(name)
    if problem is not None:
        raise UsageError(f"{flag} {name!r} is not a file inside the repository: {problem}",
                         hint="give the file's path as the repository lists it (`kvl pull hf:OWNER/REPO` lists them)")
    return name


def check_listed_name(repo: str, name: str) -> str:
    """A name in a repository's listing: one that could leave the folder makes the whole listing
    suspect (the hub allows no such names), so the repository is refused (exit 4)."""
    problem = name_problem(name)
    if problem is not None:
        raise ModelError(f"the repository {repo} lists a file named {name!r}: {problem}, so it could land outside "
                         "the model's folder; refusing the repository", hint="pull the model from another repository")
    return name


def file_in_folder(folder: Path, name: str, origin: str) -> Path:
    """``folder / name`` once ``name`` (from a listing or a catalog) is known to stay inside ``folder``;
    else a model error (exit 4) naming the file and where it came from."""
    problem = name_problem(name)
    path = folder.joinpath(*name.split("/")) if problem is None else folder
    if problem is None and not _inside(folder, path):
        problem = "it resolves outside the model's folder"
    if problem is not None:
        raise ModelError(f"refusing the file name {name!r} from {origin}: {problem}, so it could land outside "
                         "the model's folder", hint="pull the model from another repository or catalog entry")
    return path


def check_repo_id(repo: str) -> str:
    """``OWNER/REPO`` as the hub spells them; anything else is a usage error."""
    parts = repo.split("/")
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(p) and ".." not in p for p in parts):
        raise UsageError(f"{'hf:' + repo!r} is not hf:OWNER/REPO",
                         hint="owner and name are letters, digits, '-', '_' and '.', e.g. hf:someone/model-GGUF")
    return repo


def check_folder_name(name: str, origin: str) -> str:
    """One folder level under the models folder (a catalog name, a quantization)."""
    problem = name_problem(name) or ("it holds a '/'" if "/" in name else None)
    if problem is not None:
        raise ModelError(f"refusing the model folder name {name!r} from {origin}: {problem}",
                         hint="fix the catalog entry, or pull the model from another repository")
    return name
