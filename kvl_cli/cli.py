"""The ``kvl`` command: the root group and the one place where errors become exit codes."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import traceback
from collections.abc import Iterator

import click

from . import __version__
from .engine import stop
from .environment import Environment, env_flag
from .errors import EngineError, ExitCode, Interrupted, KvlError, OutputClosed, Terminated, UsageError
from .outstream import checked
from .safetext import one_line
from .signals import STOP_SIGNALS, stop_signals

COMMANDS = {
    "caption": "kvl_cli.commands.caption:caption",
    "ocr": "kvl_cli.commands.ocr:ocr",
    "ask": "kvl_cli.commands.ask:ask",
    "locate": "kvl_cli.commands.locate:locate",
    "chat": "kvl_cli.commands.chat:chat",
    "video": "kvl_cli.commands.video:video",
    "pull": "kvl_cli.commands.pull:pull",
    "models": "kvl_cli.commands.models:models",
    "cache": "kvl_cli.commands.cache:cache",
    "bench": "kvl_cli.commands.bench:bench",
    "doctor": "kvl_cli.commands.doctor:doctor",
    "serve": "kvl_cli.commands.serve:serve",
    "index": "kvl_cli.commands.index:index",
    "search": "kvl_cli.commands.search:search",
}
SHORT_HELP = {
    "caption": "Describe images.",
    "ocr": "Extract the text in images.",
    "ask": "Ask a question about images or a video.",
    "locate": "Find things in images: boxes or click points, in pixels.",
    "chat": "Talk about images and videos, turn after turn.",
    "video": "Summarise videos, or caption them scene by scene.",
    "pull": "Download a model pair (text model + vision projector).",
    "models": "List, locate and remove downloaded models.",
    "cache": "Show or clear the cache of image embeddings and prompts.",
    "bench": "Measure load, image encode, prefill and generation speed on this machine.",
    "doctor": "Show the engine, hardware and model files kvl sees.",
    "serve": "Serve the model over OpenAI's chat-completions API (the CLI uses it).",
    "index": "Add records (JSON Lines, Ray parts, .json sidecars) to the local search index.",
    "search": "Search the indexed captions, OCR text and scenes.",
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

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # before Click turns it into Abort and prints an empty line
            raise Interrupted() from exc

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
    6 network, 7 disk (or stdout could not be written), 8 prompt too long for the context,
    130 interrupted (Ctrl-C), 141 stdout closed (`kvl … | head`), 143 terminated (SIGTERM).
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
    stop.reset()
    with stop_signals(), _checked_stdout(env) as env:
        try:
            rv = cli.main(args=args, prog_name="kvl", standalone_mode=False, obj=env)
            code = int(rv) if isinstance(rv, int) else 0
            env.stdout.flush()  # the end of the output not written is a failure of the run
        except BaseException as exc:  # noqa: B036 - every way out becomes an exit code, here only
            code = exit_code_for(exc, debug=_debug(args))
    _exit(code, at_once=argv is None and code in STOPPED_CODES)


@contextlib.contextmanager
def _checked_stdout(env: Environment | None) -> Iterator[Environment]:
    """The run's Environment with stdout checked (``outstream``); the process's own stdout too, for
    what commands write with ``click.echo``."""
    saved = sys.stdout
    if env is None:
        if sys.stdout is not None:
            sys.stdout = checked(sys.stdout)
        env = Environment()
    else:
        env.stdout = checked(env.stdout)
    try:
        yield env
    finally:
        sys.stdout = saved


def _exit(code: int, *, at_once: bool = False) -> None:
    """Exit with ``code``. Output that could not be written is dropped (the run already said so)
    rather than failing again at the interpreter's exit. The process ends at once, without
    Python's teardown, when a native load was left running on a helper thread (Ctrl-C during the
    load: nothing may wait for it or free it) and, ``at_once``, when kvl itself (not a test calling
    ``main``) was stopped: everything is written and said by then, and tearing down the
    interpreter over 11 GB of model would hold the shell's prompt back for another half second."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    if at_once or stop.abandoned():
        os._exit(code)
    sys.exit(code)


def exit_code_for(exc: BaseException, *, debug: bool) -> int:
    """Say what went wrong (one line on stderr) and return its documented exit code."""
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if isinstance(exc, click.ClickException):
        _show_click_error(exc)
        return exc.exit_code
    if isinstance(exc, (OutputClosed, BrokenPipeError)):
        return ExitCode.OUTPUT_CLOSED  # the reader went away (`kvl … | head`): nobody to tell
    if _stopped(exc):
        return _say_stopped(exc)
    if not isinstance(exc, Exception):
        raise exc  # SystemExit and the like: not ours to map
    if debug:
        traceback.print_exc()
    if isinstance(exc, KvlError):
        _say(f"kvl: error: {exc}")
        return exc.exit_code
    if not debug:  # the one catch-all: a bug, reported with its type
        _say(f"kvl: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback and report it)")
    return ExitCode.ERROR


STOPPED_CODES = (ExitCode.INTERRUPTED, ExitCode.TERMINATED, ExitCode.OUTPUT_CLOSED)


def _stopped(exc: BaseException) -> bool:
    """Ctrl-C or SIGTERM, or native work that failed because one of them stopped it."""
    if isinstance(exc, (Interrupted, click.exceptions.Abort, KeyboardInterrupt)):
        return True
    return isinstance(exc, EngineError) and stop.reason() in STOP_SIGNALS


def _say_stopped(exc: BaseException) -> int:
    terminated = isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated) or stop.reason() == signal.SIGTERM
    if terminated:
        _say("kvl: terminated")
        return ExitCode.TERMINATED
    tty = sys.stderr is not None and sys.stderr.isatty()
    _say("kvl: interrupted", after_ctrl_c=tty)
    return ExitCode.INTERRUPTED


def _say(line: str, *, after_ctrl_c: bool = False) -> None:
    """One line on stderr, escaped (a file name in it may hold anything); a stderr that cannot be
    written is not an error of its own."""
    with contextlib.suppress(OSError, ValueError):
        click.echo(("\n" if after_ctrl_c else "") + one_line(line), err=True)


def _show_click_error(exc: click.ClickException) -> None:
    """Click's usage message, each line escaped (it quotes what the user typed)."""
    buf = io.StringIO()
    exc.show(file=buf)
    for line in buf.getvalue().splitlines():
        _say(line)
