from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from .. import hub
from ..catalog import Installed, NoModelError, resolve
from ..environment import env_flag
from ..render import Renderer
from ..render.base import make_console


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


def run_pull(name: str | None, quant: str | None, file: str | None, mmproj: str | None, revision: str | None,
             force: bool, err: Console) -> Installed:
    """Plan, check the disk, download, verify, install. Prints progress on ``err``."""
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


def list_repo(name: str, revision: str | None, as_json: bool) -> int:
    files = hub.repo_files(name[3:], revision or "main")
    ggufs = sorted((f for f in files.values() if f.file.endswith(".gguf")), key=lambda f: f.file)
    if as_json:
        click.echo(json.dumps([{"file": f.file, "size": f.size, "sha256": f.sha256} for f in ggufs]))
        return 0
    for f in ggufs:
        click.echo(f"{f.file}\t{hub.human(f.size)}")
    click.echo(f"pick a text model and its projector: kvl pull {name} --file MODEL.gguf --mmproj MMPROJ.gguf",
               err=True)
    return 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name", required=False, metavar="[NAME | hf:OWNER/REPO]")
@click.option("--quant", "-q", help="Quantization from the catalog [default: the entry's default, Q4_K_M].")
@click.option("--file", "file", metavar="FILE.gguf", help="With hf:OWNER/REPO: the text model file.")
@click.option("--mmproj", metavar="FILE.gguf", help="With hf:OWNER/REPO: the projector file.")
@click.option("--revision", help="With hf:OWNER/REPO: branch, tag or commit [default: main].")
@click.option("--force", is_flag=True, help="Download again even if installed.")
@click.option("--json", "as_json", is_flag=True, help="Print the installed model as JSON on stdout.")
@click.option("--debug", is_flag=True, hidden=True)
def pull(name: str | None, quant: str | None, file: str | None, mmproj: str | None, revision: str | None,
         force: bool, as_json: bool, debug: bool) -> int:
    """Download a model pair (text model + vision projector), verified.

    Without NAME: the default, Kimi-VL-A3B-Thinking-2506 Q4_K_M + Q8_0 projector (11.2 GB).
    Shows what will be downloaded and the free disk first; an interrupted pull resumes; each file
    is checked against its sha256 and the pair counts as installed only when both pass. HF_TOKEN,
    HF_ENDPOINT (mirrors) and HF_HUB_OFFLINE are honoured.

    \b
      kvl pull
      kvl pull kimi-vl-a3b-thinking-2506 --quant Q8_0
      kvl pull hf:someone/Kimi-VL-A3B-Thinking-2506-GGUF          # list its GGUF files
      kvl pull hf:someone/Kimi-VL-A3B-Thinking-2506-GGUF --file model-Q5_K_M.gguf --mmproj mmproj-f16.gguf
    """
    if name and name.startswith("hf:") and not file and not mmproj:
        return list_repo(name, revision, as_json)
    err = make_console(stderr=True)
    inst = run_pull(name, quant, file, mmproj, revision, force, err)
    if as_json:
        click.echo(json.dumps({"name": inst.name, "quant": inst.quant, "folder": str(inst.folder),
                               "model": str(inst.model_path), "mmproj": str(inst.mmproj_path), "size": inst.size}))
    return 0


def ensure_model(model: str | None, mmproj: str | None, renderer: Renderer, yes: bool = False
                 ) -> tuple[Path, Path, str]:
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
        run_pull(None, None, None, None, None, False, make_console(stderr=True))
        return resolve(model, mmproj)
