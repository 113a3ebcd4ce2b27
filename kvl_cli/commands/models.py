from __future__ import annotations

import json

import click

from ..errors import ModelError
from ..store import hub
from ..store.catalog import find_installed, installed_models, load_catalog


def _rows() -> list[dict]:
    catalog = load_catalog()
    default_name = next((e.name for e in catalog.values() if e.default), None)
    rows: list[dict] = []
    seen = set()
    for m in installed_models():
        entry = catalog.get(m.name)
        on_disk = sum(p.stat().st_size for p in m.folder.iterdir() if p.is_file())
        rows.append({"name": m.name, "quant": m.quant, "installed": True, "size": on_disk, "verified": True,
                     "path": str(m.folder), "default": bool(entry and entry.default and m.quant == entry.default_quant),
                     "model": str(m.model_path), "mmproj": str(m.mmproj_path)})
        seen.add((m.name, m.quant))
    for entry in catalog.values():
        for q in entry.quants.values():
            if (entry.name, q.name) in seen:
                continue
            size = (q.model.size or 0) + (q.mmproj.size or 0) if q.model.size and q.mmproj.size else None
            rows.append({"name": entry.name, "quant": q.name, "installed": False, "size": size, "verified": False,
                         "path": None, "default": entry.name == default_name and q.name == entry.default_quant})
    return rows


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout.")
@click.option("--debug", is_flag=True, hidden=True)
@click.pass_context
def models(ctx: click.Context, as_json: bool, debug: bool) -> int:
    """List catalog and installed models; locate or remove them.

    \b
      kvl models
      kvl models path kimi-vl-a3b-thinking-2506
      kvl models rm kimi-vl-a3b-thinking-2506:Q8_0
    """
    if ctx.invoked_subcommand is not None:
        return 0
    rows = _rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    from ..render.base import make_console

    table = Table(box=None, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("quant", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("path", overflow="fold", min_width=4)
    for r in rows:
        status = ("verified" if r["installed"] else "not installed") + (" · default" if r["default"] else "")
        table.add_row(r["name"], r["quant"], hub.human(r["size"]), status, r["path"] or "-")
    console = make_console(highlight=True)
    if not console.is_terminal:  # in a pipe: whole values on one line each, however wide the table gets
        console.width = console.measure(table, options=console.options.update_width(1 << 20)).maximum
    console.print(table)
    if not all(r["installed"] for r in rows):
        console.print("[dim]pull one with: kvl pull [NAME] [--quant QUANT][/]")
    return 0


def _find(name: str):  # type: ignore[no-untyped-def]
    inst = find_installed(name)
    if inst is None:
        raise ModelError(f"'{name}' is not installed", hint="see `kvl models` for installed names")
    return inst


@models.command("path")
@click.argument("name")
@click.option("--debug", is_flag=True, hidden=True)
def path_cmd(name: str, debug: bool) -> int:
    """Print the text model and projector paths of an installed model (one per line)."""
    inst = _find(name)
    click.echo(str(inst.model_path))
    click.echo(str(inst.mmproj_path))
    return 0


@models.command("rm")
@click.argument("name")
@click.option("--debug", is_flag=True, hidden=True)
def rm_cmd(name: str, debug: bool) -> int:
    """Remove an installed model's files."""
    inst = _find(name)
    freed = hub.remove(inst)
    click.echo(f"removed {inst.ref} ({hub.human(freed)} freed)", err=True)
    return 0
