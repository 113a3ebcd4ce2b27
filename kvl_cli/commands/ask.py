from __future__ import annotations

from typing import Any

import click

from ..environment import Environment
from ..errors import UsageError
from ..media.images import VIDEO_EXTENSIONS, expand_inputs
from ..run.documents import expand_documents, pages_note, question_job
from ..run.plan import make_plan
from ._common import pass_env, run_image_task
from .flags import common_options, document_options, documents_from, generation_options, model_options, output_options


def split_question(args: list[str], question: str | None, env: Environment) -> tuple[list[str], str]:
    """The question is -q, else the last argument, else stdin (when it is not a terminal)."""
    if question is not None:
        return args, question
    uses_stdin_image = "-" in args
    if len(args) >= 2:
        return args[:-1], args[-1]
    if not env.stdin_isatty and not uses_stdin_image:
        text = env.read_stdin_text().strip()
        if text:
            return args, text
    raise UsageError("no question given", hint='put it after the images: kvl ask photo.jpg "What is this?"')


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, required=True, metavar="IMAGE... [QUESTION]")
@click.option("--question", "-q", default=None, help="The question (instead of the last argument).")
@document_options
@model_options
@generation_options
@output_options
@pass_env
def ask(env: Environment, args: tuple[str, ...], question: str | None, **kwargs: Any) -> int:
    """Ask a question about one or more images (all in one prompt), or about a video.

    The question is the last argument, or -q, or stdin when stdin is not a terminal. The model
    keeps its full thinking by default; --think-budget or --no-think make it quicker.

    \b
      kvl ask photo.jpg "How many people are there?"
      kvl ask before.png after.png "What changed?"
      kvl ask clip.mp4 "What happens after the dog jumps?"
      kvl ask --pages 1-4 report.pdf "What is the total on the invoice?"
      echo "What does the sign say?" | kvl ask street.jpg
    """
    inputs, q = split_question(list(args), question, env)
    documents = documents_from(kwargs)
    common = common_options(kwargs)
    if len(inputs) == 1 and any(inputs[0].lower().endswith(ext) for ext in VIDEO_EXTENSIONS):
        from .video import ask_video

        return ask_video(inputs[0], q, common, env)
    refs, problems = expand_inputs(inputs, stdin=env.read_stdin)
    refs, problems, _ = expand_documents(refs, problems, documents)
    if (note := pages_note(refs, documents)) is not None:
        env.stderr.write(note)
    if problems:  # one prompt needs every image: a missing one fails the question
        return run_image_task("ask", [], problems, common, {"question": q}, 1, env)
    return run_image_task("ask", [question_job(refs, q, make_plan("ask", common, parallel=1))] if refs else [], [],
                          common, {"question": q}, 1, env)
