from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..environment import Environment
from ..errors import UsageError
from ._common import pass_env
from .flags import common_options, generation_options, model_options, output_options


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("media", nargs=-1, metavar="[MEDIA]...")
@click.option("--resume", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Continue a conversation saved with /save FILE.json.")
@model_options
@generation_options
@output_options
@pass_env
def chat(env: Environment, media: tuple[str, ...], resume: Path | None, **kwargs: Any) -> int:
    """Talk about images and videos: the model loads once, each follow-up reads only what is new.

    Type a question; /add PATH|URL attaches media to the next one, /help lists the commands,
    Ctrl-C stops an answer, Ctrl-D ends. With stdin not a terminal, each line is a turn
    (--json: one record per turn).

    \b
      kvl chat photo.jpg
      printf 'What is it?\\nAnd the colours?\\n' | kvl chat photo.jpg --json
      kvl chat --resume talk.json
    """
    from ..chat import choose_prompt, open_chat

    common = common_options(kwargs)
    if common.out.dry_run:
        raise UsageError("kvl chat has no --dry-run", hint="kvl ask IMAGE QUESTION --dry-run shows a prompt")
    conversation = open_chat(common, list(media), resume, env)
    return conversation.loop(choose_prompt(env))
