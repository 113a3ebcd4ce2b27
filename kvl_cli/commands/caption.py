from __future__ import annotations

from typing import Any

import click

from ..environment import Environment
from ..tasks import caption_prompt
from ._common import pass_env, run_per_image
from .flags import per_image_options


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, metavar="IMAGE...")
@click.option("--detail", type=click.Choice(["short", "normal", "long"]), default="normal", show_default=True,
              help="How much to say.")
@per_image_options()
@pass_env
def caption(env: Environment, inputs: tuple[str, ...], detail: str, **kwargs: Any) -> int:
    """Describe images: one caption per image, in order.

    IMAGE is a file, a directory (its images, recursively), a glob ('shots/*.png'), an http(s)
    URL, or - for stdin. The model loads once for all of them.

    \b
      kvl caption photo.jpg
      kvl caption --detail short --json photos/ > captions.jsonl
      cat photo.jpg | kvl caption -
      find photos -name '*.jpg' | kvl caption --json --skip-done caps.jsonl >> caps.jsonl
      kvl caption --sidecar txt --sidecar xmp dataset/     # dataset/a.jpg -> a.txt, a.xmp
      kvl caption report.pdf                               # one caption per page
    """
    return run_per_image("caption", inputs, kwargs, env, caption_prompt(detail), {"detail": detail})
