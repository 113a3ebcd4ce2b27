from __future__ import annotations

from typing import Any

import click

from ..environment import Environment
from ..tasks import ocr_prompt
from ._common import pass_env, run_per_image
from .flags import per_image_options, text_layer_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, metavar="IMAGE...")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown"]), default="text", show_default=True,
              help="Plain text, or Markdown keeping headings, lists and tables.")
@per_image_options(text_layer_option)
@pass_env
def ocr(env: Environment, inputs: tuple[str, ...], fmt: str, **kwargs: Any) -> int:
    """Extract all visible text from images and documents (PDF pages), faithfully, in reading order.

    OCR gives the vision encoder more tokens per image by default (2048) so small print stays
    legible; lower --image-max-tokens for speed.

    \b
      kvl ocr scan.png > scan.txt
      kvl ocr --format markdown receipt.jpg
      kvl ocr --json scans/*.png | jq -r .answer
      kvl ocr --sidecar txt --sidecar-dir ocr/ scans/
      kvl ocr --pages 1-3,7 --text-layer invoice.pdf    # pages split by \\f
    """
    return run_per_image("ocr", inputs, kwargs, env, ocr_prompt(fmt), {"format": fmt})
