"""Getting a model pair: plan, check the disk, download, verify, install (one pull per folder at a
time, under a file lock); and finding the pair a run uses, offering the default when none is there."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from ..environment import env_flag
from ..render import Renderer
from ..render.base import make_console
from . import hub
from .catalog import Installed, NoModelError, Pair, resolve


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, transient=False, disable=not console.is_terminal)


def _tqdm_for(progress: Progress, label: str) -> Any:
    """A tqdm class for huggingface_hub that draws into our rich Progress instead."""
    from tqdm.auto import tqdm

    class RichBar(tqdm):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            total, initial = kwargs.get("total"), kwargs.get("initial", 0) or 0
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._task = progress.add_task(label, total=total, completed=initial)

        def update(self, n: float | None = 1) -> bool | None:
            progress.advance(self._task, n or 0)
            return None

        def close(self) -> None:
            super().close()

    return RichBar


def run_pull(name: str | None = None, *, quant: str | None = None, file: str | None = None,
             mmproj: str | None = None, revision: str | None = None, force: bool = False,
             err: Console | None = None) -> Installed:
    """Plan, check the disk, download, verify, install. Prints progress on ``err``."""
    err = err or make_console(stderr=True)
    plan = hub.resolve_plan(name, quant, file, mmproj, revision)
    from filelock import FileLock

    # one pull per model folder at a time: a second `kvl pull` waits, then finds it installed
    plan.folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(plan.folder.parent / f".{plan.folder.name}.lock"))
    with lock:
        return _pull_locked(plan, force, err)


def _pull_locked(plan: hub.PullPlan, force: bool, err: Console) -> Installed:
    if not force:
        inst = hub.installed_plan(plan)
        if inst is not None:
            err.print(f"{inst.ref} is already installed, verified: {inst.folder}")
            return inst
    else:
        for f in plan.files:
            plan.path(f).unlink(missing_ok=True)
        (plan.folder / hub.MANIFEST).unlink(missing_ok=True)
    err.print(f"[bold]{plan.name}[/] {plan.quant} from {plan.repo}@{plan.revision[:12]}")
    for f in plan.files:
        err.print(f"  {f.file:<52} {hub.human(f.size):>9}")
    need, free = hub.check_disk(plan)
    err.print(f"  to {plan.folder} ({hub.human(need)} to download, {hub.human(free)} free)")
    digests: dict[str, str] = {}
    with _progress(err) as progress:
        for f in plan.files:
            if not err.is_terminal:
                err.print(f"downloading {f.file}")
            path = hub.download_file(plan, f, _tqdm_for(progress, f.file))
            task = progress.add_task(f"verifying {f.role}", total=path.stat().st_size)

            def advance(n: int, t: Any = task) -> None:
                progress.advance(t, n)

            digests[f.role] = hub.verify(path, f, advance)
    inst = hub.write_manifest(plan, digests)
    err.print(f"[green]installed {inst.ref}[/] (sha256 verified): {inst.folder}")
    return inst


def ensure_model(model: str | None, mmproj: str | None, renderer: Renderer, yes: bool = False) -> Pair:
    """Resolve the model; with none installed, offer to pull the default (TTY), or pull with --yes."""
    try:
        return resolve(model, mmproj)
    except NoModelError as exc:
        auto = yes or env_flag("KVL_AUTO_PULL")
        interactive = sys.stdin.isatty() and sys.stderr.isatty()
        if not auto and not interactive:
            raise
        renderer.stop_status()
        if not auto and not click.confirm(
                f"kvl: no model installed. Download {exc.entry.name} ({exc.size / 1e9:.1f} GB) now?",
                default=True, err=True):
            raise
        run_pull()
        return resolve(model, mmproj)
