"""The ``kvl`` command: the root group and the one place where errors become exit codes."""

from __future__ import annotations

import os
import sys
import traceback

import click

from . import __version__
from .errors import ExitCode, KvlError

COMMANDS = {
    "caption": "kvl_cli.commands.caption:caption",
    "ocr": "kvl_cli.commands.ocr:ocr",
    "ask": "kvl_cli.commands.ask:ask",
    "video": "kvl_cli.commands.video:video",
    "pull": "kvl_cli.commands.pull:pull",
    "models": "kvl_cli.commands.models:models",
    "cache": "kvl_cli.commands.cache:cache",
    "bench": "kvl_cli.commands.bench:bench",
    "doctor": "kvl_cli.commands.doctor:doctor",
}
SHORT_HELP = {
    "caption": "Describe images.",
    "ocr": "Extract the text in images.",
    "ask": "Ask a question about images or a video.",
    "video": "Summarise videos, or caption them scene by scene.",
    "pull": "Download a model pair (text model + vision projector).",
    "models": "List, locate and remove downloaded models.",
    "cache": "Show or clear the cache of image embeddings and prompts.",
    "bench": "Measure load, image encode, prefill and generation speed on this machine.",
    "doctor": "Show the engine, hardware and model files kvl sees.",
}


class LazyGroup(click.Group):
    """Commands import their modules only when run, so ``kvl --help`` answers at once."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        import importlib

        module, _, attr = target.partition(":")
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SHORT_HELP[name]) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="kvl")
def cli() -> None:
    """Local visual reasoning with Kimi-VL-A3B-Thinking: captions, OCR and questions about
    images and videos, on CPU, Metal or CUDA.

    \b
      kvl pull                          download the default model (11.2 GB)
      kvl caption photo.jpg             describe an image
      kvl ocr scan.png > scan.txt       extract its text
      kvl ask img.png "How many cats?"  ask about it
      kvl video --scenes --format srt clip.mp4 > clip.srt

    The answer goes to stdout; progress, thinking and errors to stderr. Exit codes: 0 ok,
    1 internal error, 2 bad usage, 3 bad input, 4 model problem, 5 some inputs failed,
    6 network, 7 disk, 8 prompt too long for the context, 130 interrupted.
    """


def _debug(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("KVL_DEBUG", "").lower() in ("1", "true", "yes")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command, map every failure to a documented exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(args)
    code: int
    try:
        rv = cli.main(args=args, prog_name="kvl", standalone_mode=False)
        code = int(rv) if isinstance(rv, int) else 0
    except click.exceptions.Abort:
        click.echo("kvl: interrupted", err=True)
        code = ExitCode.INTERRUPTED
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except KvlError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"kvl: error: {exc}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        click.echo("\nkvl: interrupted", err=True)
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`kvl ... | head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = ExitCode.OK
    except Exception as exc:  # the one catch-all: a bug, reported with its type
        if debug:
            traceback.print_exc()
            code = ExitCode.ERROR
        else:
            click.echo(f"kvl: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback "
                       "and report it)", err=True)
            code = ExitCode.ERROR
    sys.exit(code)
