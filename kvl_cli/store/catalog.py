"""The model catalog (``models/*.toml``) and the models installed on this machine.

A model is *installed* only when its folder holds ``kvl-manifest.json``, written after both
files were verified; a half-downloaded or corrupt pair never looks installed.

Which model a command uses: ``--model`` (a path or an installed name) ▸ ``KVL_MODEL`` ▸ the
catalog's default model once pulled. The projector: ``--mmproj`` ▸ ``KVL_MMPROJ`` ▸ the pulled
pair's ▸ the one ``mmproj*.gguf`` beside a model given by path.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import ModelError
from .names import check_folder_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MANIFEST = "kvl-manifest.json"


@dataclass
class FileSpec:
    file: str
    size: int | None = None
    sha256: str | None = None


@dataclass
class Quant:
    name: str
    model: FileSpec
    mmproj: FileSpec


@dataclass
class CatalogEntry:
    name: str
    description: str
    repo: str
    revision: str
    license: str
    default_quant: str
    quants: dict[str, Quant]
    sampling: dict[str, float] = field(default_factory=dict)
    default: bool = False

    def quant(self, name: str | None) -> Quant:
        key = name or self.default_quant
        for q in self.quants:
            if q.lower() == key.lower():
                return self.quants[q]
        raise ModelError(f"{self.name} has no quantization '{key}'",
                         hint=f"choose one of: {', '.join(self.quants)}")


Pair = tuple[Path, Path, str]  # a model pair: text model, projector, the model's name


def catalog_dirs() -> list[Path]:
    override = os.environ.get("KVL_CATALOG")
    if override:
        return [Path(override)]
    package = Path(__file__).resolve().parent.parent  # kvl_cli/: the wheel puts models/ there as catalog_data
    return [d for d in (package / "catalog_data", package.parent / "models") if d.is_dir()]


def load_catalog() -> dict[str, CatalogEntry]:
    entries: dict[str, CatalogEntry] = {}
    for folder in catalog_dirs():
        for toml in sorted(folder.glob("*.toml")):
            data = tomllib.loads(toml.read_text(encoding="utf-8"))
            quants = {
                qname: Quant(qname, FileSpec(**q["model"]), FileSpec(**q["mmproj"]))
                for qname, q in data.get("quants", {}).items()
            }
            entry = CatalogEntry(
                name=data["name"], description=data.get("description", ""), repo=data["repo"],
                revision=data.get("revision", "main"), license=data.get("license", ""),
                default_quant=data.get("default_quant", next(iter(quants), "")), quants=quants,
                sampling=data.get("sampling", {}), default=bool(data.get("default", False)),
            )
            entries.setdefault(entry.name, entry)
        if entries:
            break
    return entries


def default_entry() -> CatalogEntry:
    catalog = load_catalog()
    for entry in catalog.values():
        if entry.default:
            return entry
    if not catalog:
        raise ModelError("the model catalog is empty", hint="reinstall kvl")
    return next(iter(catalog.values()))


@dataclass
class Installed:
    name: str  # catalog name, or "hf:owner/repo"
    quant: str
    folder: Path
    manifest: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.folder / self.manifest["files"]["model"]["file"]

    @property
    def mmproj_path(self) -> Path:
        return self.folder / self.manifest["files"]["mmproj"]["file"]

    @property
    def size(self) -> int:
        return sum(int(f.get("size") or 0) for f in self.manifest["files"].values())

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.quant}"


def install_folder(name: str, quant: str) -> Path:
    """``<models>/<name>/<quant>``, one folder level each; a name that would nest or climb is refused."""
    safe = name.replace("hf:", "hf/").replace("/", "--", 2 if name.startswith("hf:") else 1)
    origin = f"the model {name}"
    return paths.models_dir() / check_folder_name(safe, origin) / check_folder_name(quant, origin)


def installed_models() -> list[Installed]:
    root = paths.models_dir()
    found: list[Installed] = []
    if not root.is_dir():
        return found
    for manifest in sorted(root.rglob(MANIFEST)):
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            found.append(Installed(data["name"], data["quant"], manifest.parent, data))
        except (OSError, ValueError, KeyError):
            continue  # a damaged manifest: the model is not counted as installed
    return found


def find_installed(ref: str) -> Installed | None:
    """``name``, ``name:quant`` or ``hf:owner/repo[:quant]``; without a quant, the default or the only one."""
    name, _, quant = ref.rpartition(":") if ref.count(":") > (1 if ref.startswith("hf:") else 0) else (ref, "", "")
    if not name:
        name, quant = ref, ""
    matches = [m for m in installed_models() if m.name.lower() == name.lower()]
    if quant:
        matches = [m for m in matches if m.quant.lower() == quant.lower()]
    if not matches:
        return None
    catalog = load_catalog()
    if not quant and name in catalog:
        for m in matches:
            if m.quant == catalog[name].default_quant:
                return m
    return matches[0]


def _sibling_projector(model: Path) -> Path | None:
    candidates = sorted(p for p in model.parent.glob("*.gguf") if "mmproj" in p.name.lower() and p != model)
    return candidates[0] if len(candidates) == 1 else None


def resolve(model: str | None, mmproj: str | None) -> tuple[Path, Path, str]:
    """Return (text model path, projector path, display name) or raise ModelError saying what to do."""
    model = model or os.environ.get("KVL_MODEL") or None
    mmproj = mmproj or os.environ.get("KVL_MMPROJ") or None
    if model is None:
        return _resolve_default(mmproj)
    path = Path(model).expanduser()
    looks_like_path = path.suffix.lower() == ".gguf" or (os.sep in model and not model.startswith("hf:"))
    if path.exists() or looks_like_path:
        return _resolve_path(path, model, mmproj)
    return _resolve_installed(model, mmproj)


def _with_projector(inst: Installed, mmproj: str | None) -> tuple[Path, Path, str]:
    return inst.model_path, Path(mmproj).expanduser() if mmproj else inst.mmproj_path, inst.ref


def _resolve_default(mmproj: str | None) -> tuple[Path, Path, str]:
    """No model named: the catalog's default once pulled, else the only installed model."""
    entry = default_entry()
    inst = find_installed(entry.name)
    if inst is None:
        others = installed_models()
        if len(others) != 1:
            raise NoModelError(entry)
        inst = others[0]
    return _with_projector(inst, mmproj)


def _resolve_path(path: Path, model: str, mmproj: str | None) -> tuple[Path, Path, str]:
    """A model given as a file: its projector from --mmproj, else the one mmproj*.gguf beside it."""
    if not path.exists():
        raise ModelError(f"model file not found: {model}", hint="check the path, or pull a model with `kvl pull`")
    _check_gguf(path)  # /etc/passwd is "not a GGUF file", not a model that lacks a projector
    if mmproj is None:
        sibling = _sibling_projector(path)
        if sibling is None:
            raise ModelError(
                f"no vision projector for {path.name}",
                hint="pass --mmproj PATH (the mmproj-*.gguf file that belongs to this model) or set KVL_MMPROJ",
            )
        return path, sibling, path.name
    proj = Path(mmproj).expanduser()
    if not proj.exists():
        raise ModelError(f"projector file not found: {mmproj}", hint="check the --mmproj path")
    return path, proj, path.name


def _check_gguf(path: Path) -> None:
    """The file starts like a GGUF file (4 bytes read; the header is checked in full at load)."""
    if path.is_dir():
        raise ModelError(f"{path} is a directory, not a GGUF file", hint="give the path of the .gguf file")
    if not path.is_file():  # a FIFO or a device: opening it could block, and llama.cpp maps files
        raise ModelError(f"{path} is not a GGUF file (not a regular file)", hint="give a .gguf model file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}", hint="check the file's permissions") from None
    if magic != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file", hint="give a .gguf model file (llama.cpp format)")


def _resolve_installed(model: str, mmproj: str | None) -> tuple[Path, Path, str]:
    inst = find_installed(model)
    if inst is None:
        base = model.split(":")[0]
        if base in load_catalog() or model.startswith("hf:"):
            raise ModelError(f"model '{model}' is not installed", hint=f"run `kvl pull {model}`")
        raise ModelError(f"no model file or installed model named '{model}'",
                         hint="give a .gguf path, or see `kvl models` for installed names")
    return _with_projector(inst, mmproj)


class NoModelError(ModelError):
    """Nothing to run: the default model is not pulled and no model was given."""

    def __init__(self, entry: CatalogEntry) -> None:
        q = entry.quant(None)
        size = sum(f.size or 0 for f in (q.model, q.mmproj))
        super().__init__(
            f"no model installed (the default, {entry.name} {q.name}, is {size / 1e9:.1f} GB)",
            hint="run `kvl pull`, or pass --model PATH --mmproj PATH",
        )
        self.entry = entry
        self.size = size
