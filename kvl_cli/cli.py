"""The ``kvl`` command: the root group and the one place where errors become exit codes."""

from __future__ import annotations

import os
import sys
import traceback

import click

from . import __version__
from .environment import Environment, env_flag
from .errors import ExitCode, Interrupted, KvlError, UsageError

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
    "serve": "kvl_cli.commands.serve:serve",
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
    "serve": "Serve the model over OpenAI's chat-completions API (the CLI uses it).",
}


class LazyGroup(click.Group):
    """Commands import their modules only when run, so ``kvl --help`` answers at once."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = _load(name)
        if cmd is not None and ctx.default_map is None:
            ctx.default_map = _config_defaults(name, cmd)
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


def _load(name: str) -> click.Command | None:
    target = COMMANDS.get(name)
    if target is None:
        return None
    import importlib

    module, _, attr = target.partition(":")
    cmd: click.Command = getattr(importlib.import_module(module), attr)
    return cmd


def _config_defaults(name: str, cmd: click.Command) -> dict[str, dict[str, object]]:
    """The config file's defaults for the command being run (see ``config``), as Click's default map."""
    from . import config

    cfg = config.load()
    if not cfg.globals and not cfg.commands:
        return {}
    for key in cfg.globals:  # a top-level key must be an option of some command
        if not any(config.param_for(c, key) for c in map(_load, COMMANDS) if c is not None):
            raise UsageError(f"{cfg.path}: {key}: no kvl command has such an option", hint="see kvl COMMAND --help")
    return {name: config.default_map(cfg, name, cmd, list(COMMANDS))}


def _debug(argv: list[str]) -> bool:
    if "--debug" in argv:
        return True
    try:
        return env_flag("KVL_DEBUG")
    except UsageError:
        return False  # reported when the command reads it


def main(argv: list[str] | None = None, env: Environment | None = None) -> None:
    """Entry point: run the command, map every failure to a documented exit code. ``env``: the
    streams to use (tests pass their own; default: the process's)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = cli.main(args=args, prog_name="kvl", standalone_mode=False, obj=env or Environment())
        code = int(rv) if isinstance(rv, int) else 0
    except BaseException as exc:  # noqa: B036 - every way out becomes an exit code, here only
        code = exit_code_for(exc, debug=_debug(args))
    sys.exit(code)


def exit_code_for(exc: BaseException, *, debug: bool) -> int:
    """Say what went wrong (one line on stderr) and return its documented exit code."""
    if isinstance(exc, (Interrupted, click.exceptions.Abort, KeyboardInterrupt)):
        click.echo(("\n" if isinstance(exc, KeyboardInterrupt) else "") + "kvl: interrupted", err=True)
        return ExitCode.INTERRUPTED
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if isinstance(exc, click.ClickException):
        exc.show()
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):
        # the reader went away (`kvl ... | head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
    if not isinstance(exc, Exception):
        raise exc  # SystemExit and the like: not ours to map
    if debug:
        traceback.print_exc()
    if isinstance(exc, KvlError):
        click.echo(f"kvl: error: {exc}", err=True)
        return exc.exit_code
    if not debug:  # the one catch-all: a bug, reported with its type
        click.echo(f"kvl: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback "
                   "and report it)", err=True)
    return ExitCode.ERROR
