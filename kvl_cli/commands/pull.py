from __future__ import annotations

import json

import click

from ..render.base import make_console
from ..store import hub
from ..store.pull import run_pull


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
    inst = run_pull(name, quant=quant, file=file, mmproj=mmproj, revision=revision, force=force, err=err)
    if as_json:
        click.echo(json.dumps({"name": inst.name, "quant": inst.quant, "folder": str(inst.folder),
                               "model": str(inst.model_path), "mmproj": str(inst.mmproj_path), "size": inst.size}))
    return 0
