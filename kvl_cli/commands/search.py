from __future__ import annotations

import json
import os
import re
import sqlite3

import click

from ..environment import Environment
from ..index import Hit, index_path, open_index, where_line
from ..index import search as run_search
from ..index.db import sqlite_error
from ..index.search import MARK_OFF, MARK_ON, shown
from ..index.sources import current_folder
from ..safetext import json_safe, one_line

pass_env = click.make_pass_decorator(Environment, ensure=True)  # not _common's: it imports the engine
BOLD, PLAIN = "\x1b[1m", "\x1b[0m"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("query")
@click.option("--index", "index_file", metavar="FILE", default=None,
              help="The index file [default: index.sqlite in kvl's data folder].")
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="Most hits shown (1 to 10,000).")
@click.option("--task", metavar="TASK", default=None, help="Only records of this task (caption, ocr, video, …).")
@click.option("--path", "path_glob", metavar="GLOB", default=None,
              help="Only records whose file matches GLOB ('talks/*.mp4' matches the end of a path; * matches / "
              "too).")
@click.option("--json", "as_json", is_flag=True,
              help="One hit per line: file, scene, page, start, end, score, snippet, text (and task, model, date).")
@click.option("--debug", is_flag=True, help="Show the traceback of an error [env KVL_DEBUG=1].")
@pass_env
def search(env: Environment, query: str, index_file: str | None, limit: int, task: str | None,
           path_glob: str | None, as_json: bool, debug: bool) -> int:
    """Search the records kvl index added: the best hits first (BM25), each with its file, its
    time range (scenes) or page, and the words that matched.

    QUERY: words (all must match), "a phrase", prefix*, or OR between two terms.

    \b
      kvl search "whiteboard diagram"
      kvl search --task video --json "red car" | jq -r '.file + " " + (.start|tostring)'
      mpv --start=65 talk.mp4     # open a hit at its time
    """
    where = index_path(index_file)
    conn = open_index(where)
    try:
        hits = run_search(conn, query, limit=limit, task=task, path=path_glob)
    except sqlite3.Error as exc:  # a damaged page, a lock another program holds past the wait
        raise sqlite_error(exc, where) from None
    finally:
        conn.close()
    if not hits:
        env.stderr.write(one_line(f"kvl: no records match {shown(query)}") + "\n")
    for hit in hits:
        env.stdout.write(_json(hit) if as_json else _text(hit, bold=_bold(env)))
    env.stdout.flush()
    return 0


def _bold(env: Environment) -> bool:
    """Matched words in bold on a terminal that draws it: not with NO_COLOR, not on TERM=dumb."""
    return bool(env.stdout_isatty) and not env.no_color and os.environ.get("TERM") != "dumb"


def _json(hit: Hit) -> str:
    return json_safe(json.dumps(hit.to_dict(), ensure_ascii=False)) + "\n"


def _text(hit: Hit, *, bold: bool) -> str:
    """The hit's place, then its snippet on the next line: matched words bold on a terminal."""
    on, off = (BOLD, PLAIN) if bold else ("", "")
    flat = re.sub(r"\s+", " ", hit.snippet)  # OCR text's lines: one line of snippet
    pieces = [one_line(p) for p in flat.replace(MARK_OFF, MARK_ON).split(MARK_ON)]
    snippet = "".join(p if i % 2 == 0 else f"{on}{p}{off}" for i, p in enumerate(pieces))
    head = one_line(where_line(hit, current_folder()) + (f"  ({hit.task})" if hit.task else ""))  # a record's task too
    return f"{on}{head}{off}\n  {snippet}\n" if bold else f"{head}\n  {snippet}\n"
