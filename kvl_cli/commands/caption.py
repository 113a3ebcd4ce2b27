from __future__ import annotations

from typing import Any

import click

from ..media.images import expand_inputs
from ..options import generation_options, model_options, output_options, split_kwargs
from ..tasks import caption_prompt
from ._common import per_image_jobs, run_image_task


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE...")
@click.option("--detail", type=click.Choice(["short", "normal", "long"]), default="normal", show_default=True,
              help="How much to say.")
@model_options
@generation_options
@output_options
def caption(inputs: tuple[str, ...], detail: str, **kwargs: Any) -> int:
    """Describe images: one caption per image, in order.

    IMAGE is a file, a directory (its images, recursively), a glob ('shots/*.png'), an http(s)
    URL, or - for stdin. The model loads once for all of them.

    \b
      kvl caption photo.jpg
      kvl caption --detail short --json photos/ > captions.jsonl
      cat photo.jpg | kvl caption -
    """
    common = split_kwargs(kwargs)
    refs, problems = expand_inputs(list(inputs))
    jobs = per_image_jobs(refs, caption_prompt(detail))
    return run_image_task("caption", jobs, problems, common, {"detail": detail})
