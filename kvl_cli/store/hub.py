"""Pulling model pairs from the Hugging Face hub (or a mirror) safely.

* Downloads go through ``huggingface_hub`` so HF_TOKEN, HF_ENDPOINT mirrors, proxies, offline
  mode and resume behave as users expect. Files land in the model's folder under a temporary
  name and are renamed when complete (huggingface_hub's ``local_dir`` mode, with a file lock per
  file, so two pulls of the same file do not corrupt each other).
* Every file is checked against its sha256 (the catalog's, else the hub's LFS hash); a mismatch
  deletes the file. The pair counts as installed only when ``kvl-manifest.json`` is written,
  after both files verified.
* No file lands outside its model's folder: names from flags, catalogs and listings are checked
  before anything is downloaded (``model_paths``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..environment import env_flag
from ..errors import DiskError, ModelError, NetworkError, UsageError
from .catalog import MANIFEST, CatalogEntry, FileSpec, Installed, install_folder, load_catalog
from .hub_errors import OFFLINE_HINT, RESUME_HINT, hub_error
from .names import check_listed_name, check_repo_id, check_typed_name, file_in_folder

NETWORK_TIMEOUT_S = float(os.environ.get("KVL_NETWORK_TIMEOUT", "15"))
DISK_MARGIN = 256 * 2**20  # keep some room besides the files themselves


@dataclass
class PlannedFile:
    role: str  # "model" | "mmproj"
    repo: str
    revision: str
    file: str
    size: int | None
    sha256: str | None

    @property
    def known(self) -> bool:
        return self.size is not None and self.sha256 is not None


@dataclass
class PullPlan:
    name: str
    quant: str
    repo: str
    revision: str
    folder: Path
    files: list[PlannedFile]
    license: str = ""

    @property
    def total(self) -> int:
        return sum(f.size or 0 for f in self.files)

    def path(self, f: PlannedFile) -> Path:
        """Where ``f`` lands: always inside the model's folder."""
        return file_in_folder(self.folder, f.file, f"{self.repo}'s files")

    def remaining(self) -> int:
        """Bytes still to fetch: complete files are skipped, partial ones resume."""
        left = 0
        for f in self.files:
            have = self.path(f).stat().st_size if self.path(f).exists() else 0
            left += max(0, (f.size or 0) - have)
        return left


def offline() -> bool:
    return env_flag("HF_HUB_OFFLINE")


def endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def probe_endpoint() -> None:
    """Fail in seconds, not after the client's retry backoff, when the hub cannot be reached at all."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint() or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=NETWORK_TIMEOUT_S):
            pass
    except OSError as exc:
        raise NetworkError(f"cannot reach the hub at {url.scheme}://{url.netloc} ({exc.strerror or exc})",
                           hint=RESUME_HINT) from None


def repo_files(repo: str, revision: str = "main") -> dict[str, FileSpec]:
    """The repository's files with size and (LFS) sha256, from the hub's tree API."""
    check_repo_id(repo)
    if offline():
        raise NetworkError(f"cannot list {repo}: offline mode (HF_HUB_OFFLINE=1)", hint="unset HF_HUB_OFFLINE")
    probe_endpoint()
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint())
    try:
        entries = list(api.list_repo_tree(repo, revision=revision, recursive=True, expand=False))
    except Exception as exc:  # huggingface_hub raises many types; all become one sentence
        raise hub_error(exc, repo, offline()) from None
    files: dict[str, FileSpec] = {}
    for e in entries:
        if getattr(e, "size", None) is None:
            continue  # a folder
        check_listed_name(repo, str(e.path))
        lfs = getattr(e, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        if sha is None and isinstance(lfs, dict):
            sha = lfs.get("sha256") or lfs.get("oid")
        files[e.path] = FileSpec(e.path, int(getattr(e, "size", 0)), sha)
    return files


def plan_catalog(entry: CatalogEntry, quant: str | None) -> PullPlan:
    q = entry.quant(quant)
    folder = install_folder(entry.name, q.name)
    planned = [PlannedFile(role, entry.repo, entry.revision, spec.file, spec.size, spec.sha256)
               for role, spec in (("model", q.model), ("mmproj", q.mmproj))]
    for f in planned:
        file_in_folder(folder, f.file, f"the catalog entry {entry.name}")
    if not all(f.known for f in planned):
        listing = repo_files(entry.repo, entry.revision)
        for f in planned:
            if f.file not in listing:
                raise NetworkError(f"{entry.repo} has no file {f.file}", hint="the catalog may be out of date")
            f.size = f.size or listing[f.file].size
            f.sha256 = f.sha256 or listing[f.file].sha256
    return PullPlan(entry.name, q.name, entry.repo, entry.revision, folder, planned, entry.license)


def plan_hf(repo: str, file: str, mmproj: str, revision: str = "main") -> PullPlan:
    check_typed_name(file, "--file")  # before any request: a bad name costs nothing
    check_typed_name(mmproj, "--mmproj")
    quant = Path(file).stem
    folder = install_folder(f"hf:{repo}", quant)
    listing = repo_files(repo, revision)
    planned = []
    for role, name in (("model", file), ("mmproj", mmproj)):
        if name not in listing:
            ggufs = ", ".join(sorted(f for f in listing if f.endswith(".gguf"))) or "none"
            raise NetworkError(f"{repo} has no file {name}", hint=f"its GGUF files: {ggufs}")
        spec = listing[name]
        planned.append(PlannedFile(role, repo, revision, name, spec.size, spec.sha256))
    return PullPlan(f"hf:{repo}", quant, repo, revision, folder, planned)


def resolve_plan(name: str | None, quant: str | None, file: str | None, mmproj: str | None,
                 revision: str | None = None) -> PullPlan:
    if name and name.startswith("hf:"):
        repo = check_repo_id(name[3:])
        if not file or not mmproj:
            raise UsageError("pulling from another repository needs --file and --mmproj",
                             hint=f"list its GGUF files with: kvl pull {name}")
        return plan_hf(repo, file, mmproj, revision or "main")
    catalog = load_catalog()
    if name is None:
        from .catalog import default_entry

        return plan_catalog(default_entry(), quant)
    base, _, q = name.partition(":")
    if base not in catalog:
        raise ModelError(f"no model named '{base}' in the catalog",
                         hint=f"known: {', '.join(catalog)}; or pull any repository with hf:OWNER/REPO")
    return plan_catalog(catalog[base], quant or q or None)


def free_space(folder: Path) -> int:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_disk(plan: PullPlan) -> tuple[int, int]:
    need, free = plan.remaining(), free_space(plan.folder)
    if need + DISK_MARGIN > free:
        raise DiskError(
            f"not enough disk space: {plan.name} needs {human(need)} more, {human(free)} free at {plan.folder}",
            hint="free some space, or set KVL_HOME to a larger disk",
        )
    return need, free


def installed_plan(plan: PullPlan) -> Installed | None:
    manifest = plan.folder / MANIFEST
    if not manifest.exists():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for f in plan.files:
        path = plan.path(f)
        if not path.exists() or (f.size is not None and path.stat().st_size != f.size):
            return None
        if f.sha256 and data["files"][f.role].get("sha256") != f.sha256:
            return None
    return Installed(plan.name, plan.quant, plan.folder, data)


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 2**20):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def download_file(plan: PullPlan, f: PlannedFile, tqdm_class: Any = None) -> Path:
    """One file into the model folder, resumable; returns its final path (not yet verified)."""
    from huggingface_hub import hf_hub_download

    if offline():
        raise NetworkError(f"cannot download {f.file}: offline mode (HF_HUB_OFFLINE=1)", hint=OFFLINE_HINT)
    expected = plan.path(f)
    plan.folder.mkdir(parents=True, exist_ok=True)
    probe_endpoint()
    try:
        path = hf_hub_download(
            f.repo, f.file, revision=f.revision, local_dir=plan.folder, endpoint=endpoint(),
            tqdm_class=tqdm_class, etag_timeout=NETWORK_TIMEOUT_S,
        )
    except OSError as exc:
        if getattr(exc, "errno", None) == 28:  # ENOSPC
            raise DiskError(f"the disk filled up while downloading {f.file}", hint="free some space and pull again") \
                from None
        raise hub_error(exc, f.file, offline()) from None
    except Exception as exc:
        raise hub_error(exc, f.file, offline()) from None
    if Path(path).resolve() != expected.resolve():
        raise ModelError(f"{f.file} was saved as {path}, outside its expected place {expected}",
                         hint="report this; the file was not installed")
    return Path(path)


def verify(path: Path, f: PlannedFile, progress: Callable[[int], None] | None = None) -> str:
    """Check size and sha256; a bad file is deleted so that it can never pass for installed."""
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        path.unlink(missing_ok=True)
        raise NetworkError(f"{f.file} has {size} bytes, expected {f.size}: deleted it",
                           hint="run `kvl pull` again")
    digest = sha256_file(path, progress)
    if f.sha256 and digest != f.sha256.lower():
        path.unlink(missing_ok=True)
        raise NetworkError(f"{f.file} failed its sha256 check (got {digest[:12]}…, expected {f.sha256[:12]}…): "
                           "deleted it", hint="run `kvl pull` again; if it repeats, the mirror serves a bad file")
    return digest


def write_manifest(plan: PullPlan, digests: dict[str, str]) -> Installed:
    data = {
        "name": plan.name, "quant": plan.quant, "repo": plan.repo, "revision": plan.revision,
        "license": plan.license, "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {f.role: {"file": f.file, "size": plan.path(f).stat().st_size,
                           "sha256": digests[f.role]} for f in plan.files},
    }
    tmp = plan.folder / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, plan.folder / MANIFEST)  # atomic: a reader sees the old state or the new, never half
    return Installed(plan.name, plan.quant, plan.folder, data)


def remove(inst: Installed) -> int:
    size = sum(p.stat().st_size for p in inst.folder.rglob("*") if p.is_file())
    (inst.folder / MANIFEST).unlink(missing_ok=True)  # first: a half-removed model never looks installed
    shutil.rmtree(inst.folder, ignore_errors=True)
    parent = inst.folder.parent
    if parent.exists() and not any(parent.iterdir()):
        parent.rmdir()
    return size


def human(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit in ("B", "KB") else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
