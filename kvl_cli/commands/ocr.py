from __future__ import annotations

from typing import Any

import click

from ..distributed.options import ray_from, ray_options
from ..environment import Environment
from ..options import (
    BatchOptions,
    batch_options,
    common_options,
    generation_options,
    model_options,
    output_options,
    take,
)
from ..tasks import ocr_prompt
from ._common import batch_inputs, pass_env, per_image_jobs, run_image_task


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, metavar="IMAGE...")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown"]), default="text", show_default=True,
              help="Plain text, or Markdown keeping headings, lists and tables.")
@model_options
@batch_options
@ray_options
@generation_options
@output_options
@pass_env
def ocr(env: Environment, inputs: tuple[str, ...], fmt: str, **kwargs: Any) -> int:
    """Extract all visible text from images, faithfully, in reading order.

    OCR gives the vision encoder more tokens per image by default (2048) so small print stays
    legible; lower --image-max-tokens for speed.

    \b
      kvl ocr scan.png > scan.txt
      kvl ocr --format markdown receipt.jpg
      kvl ocr --json scans/*.png | jq -r .answer
    """
    b = take(BatchOptions, kwargs)
    ray = ray_from(kwargs)
    common = common_options(kwargs)
    if ray is not None:
        from ..distributed import run_on_ray

        return run_on_ray("ocr", inputs, ray, common, env, batch=b,
                          meta={"format": fmt}, instruction=ocr_prompt(fmt))
    refs, problems = batch_inputs(inputs, b, env)
    if not refs and not problems and (b.skip_done or b.shard):
        return 0  # everything is done or belongs to other shards
    jobs = per_image_jobs(refs, ocr_prompt(fmt))
    return run_image_task("ocr", jobs, problems, common, {"format": fmt}, parallel=b.parallel, env=env)
