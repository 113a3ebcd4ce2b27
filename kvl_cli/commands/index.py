from __future__ import annotations

from collections.abc import Callable

import click

from ..environment import Environment
from ..errors import ExitCode
from ..index import Tally, build, index_path
from ..safetext import one_line

pass_env = click.make_pass_decorator(Environment, ensure=True)  # not _common's: it imports the engine


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--index", "index_file", metavar="FILE", default=None,
              help="The index file [default: index.sqlite in kvl's data folder].")
@click.option("--debug", is_flag=True, help="Show the traceback of an error [env KVL_DEBUG=1].")
@pass_env
def index(env: Environment, paths: tuple[str, ...], index_file: str | None, debug: bool) -> int:
    """Add kvl's records to the local search index (SQLite FTS5), for kvl search.

    PATH is a JSON Lines file (--json, video --scenes --format jsonl), a folder of them (Ray's
    --output parts, .json sidecars), a bucket URI (s3://…) or - for stdin. Incremental: a record
    already indexed is not added again, a changed one replaces it; an unchanged file is not read.

    \b
      kvl caption --json photos/ > caps.jsonl && kvl index caps.jsonl
      kvl video --scenes --format jsonl talks/ | kvl index -
      kvl index --index lib.sqlite runs/ s3://bucket/out/
    """
    target = index_path(index_file)
    tally = build(list(paths), target, env.stderr, env.stdin, progress=_progress(env))
    if env.stderr_isatty:
        env.stderr.write("\r\x1b[K")
    unchanged_files = f", {tally.unchanged_files:,} unchanged (not read)" if tally.unchanged_files else ""
    env.stderr.write(one_line(
        f"kvl: indexed {_n(tally.files, 'file')}{unchanged_files} into {target}: {_n(tally.added, 'new record')}, "
        f"{tally.replaced:,} replaced, {tally.unchanged:,} already there{_notes(tally)}") + "\n")
    for missing in tally.missing:
        env.stderr.write(one_line(f"kvl: error: {missing}") + "\n")
    if tally.damage.count:
        env.stderr.write(one_line(f"kvl: error: {_n(tally.damage.count, 'damaged line')} skipped (the first: "
                                  f"{tally.damage.first}); everything else is indexed") + "\n")
    if tally.missing and not tally.files:
        return int(ExitCode.INPUT)  # nothing there to index at all
    return int(ExitCode.PARTIAL) if tally.damage.count or tally.missing else 0


def _notes(tally: Tally) -> str:
    notes = f"; {_n(tally.failed, 'record')} of failed inputs left out" if tally.failed else ""
    if tally.damage.others:
        notes += f"; {_n(tally.damage.others, '.json file')} not kvl's passed over"
    if tally.damage.special:
        notes += f"; {tally.damage.special:,} not plain files (FIFOs, devices) passed over"
    return notes


def _progress(env: Environment) -> Callable[[Tally], None] | None:
    """On a terminal, one line that counts the records as they are committed."""
    if not env.stderr_isatty:
        return None

    def show(tally: Tally) -> None:
        env.stderr.write(f"\rkvl: indexing: {tally.added + tally.replaced + tally.unchanged:,} records…")
        env.stderr.flush()

    return show


def _n(count: int, thing: str) -> str:
    return f"{count:,} {thing}{'' if count == 1 else 's'}"
