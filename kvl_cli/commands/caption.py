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
from ..tasks import caption_prompt
from ._common import batch_inputs, pass_env, per_image_jobs, run_image_task


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, metavar="IMAGE...")
@click.option("--detail", type=click.Choice(["short", "normal", "long"]), default="normal", show_default=True,
              help="How much to say.")
@model_options
@batch_options
@ray_options
@generation_options
@output_options
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
    """
    b = take(BatchOptions, kwargs)
    ray = ray_from(kwargs)
    common = common_options(kwargs)
    if ray is not None:
        from ..distributed import run_on_ray

        return run_on_ray("caption", inputs, ray, common, env, batch=b,
                          meta={"detail": detail}, instruction=caption_prompt(detail))
    refs, problems = batch_inputs(inputs, b, env)
    if not refs and not problems and (b.skip_done or b.shard):
        return 0  # everything is done or belongs to other shards
    jobs = per_image_jobs(refs, caption_prompt(detail))
    return run_image_task("caption", jobs, problems, common, {"detail": detail}, parallel=b.parallel, env=env)
