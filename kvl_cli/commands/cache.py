from __future__ import annotations

import json

import click

from ..cache import DEFAULT_CAP, KINDS, DiskCache, cap_from_env
from ..errors import UsageError
from ..store import hub


def _open() -> DiskCache:
    try:
        cap = cap_from_env()
    except ValueError as exc:
        raise UsageError(f"KVL_CACHE_SIZE: {exc}", hint="set it like 4G or 500M, or 0 to turn the cache off") from None
    return DiskCache(cap=cap)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cache() -> None:
    """The disk cache of image embeddings and evaluated prompts.

    A second question about the same image skips the vision encoder (embeddings) and the
    reading of the image (prompts). Its size is capped (KVL_CACHE_SIZE, default 4G; 0 turns
    it off); the least recently used entries go first.

    \b
      kvl cache info
      kvl cache clear
      KVL_CACHE_SIZE=10G kvl caption photos/
    """


@cache.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def info(as_json: bool) -> int:
    """Where the cache is, what it holds, and its cap."""
    c = _open()
    stats = c.stats()
    total = sum(s.bytes for s in stats.values())
    if as_json:
        click.echo(json.dumps({"path": str(c.root), "cap": c.cap, "bytes": total,
                               **{k: {"entries": s.entries, "bytes": s.bytes} for k, s in stats.items()}}))
        return 0
    click.echo(f"cache: {c.root}")
    cap = "off (KVL_CACHE_SIZE=0)" if c.cap == 0 else hub.human(c.cap) + (
        "" if c.cap == DEFAULT_CAP else " (KVL_CACHE_SIZE)")
    click.echo(f"cap:   {cap}")
    for kind in KINDS:
        s = stats[kind]
        click.echo(f"{kind + ':':<12} {s.entries:>6} entries  {hub.human(s.bytes):>9}")
    click.echo(f"{'total:':<12} {sum(s.entries for s in stats.values()):>6} entries  {hub.human(total):>9}")
    return 0


@cache.command()
@click.option("--only", type=click.Choice(KINDS), default=None, help="Clear one kind of entry only.")
def clear(only: str | None) -> int:
    """Delete cached embeddings and prompts (models are not touched)."""
    c = _open()
    gone = c.clear(only)
    click.echo(f"removed {gone.entries} entries ({hub.human(gone.bytes)}) from {c.root}", err=True)
    return 0
