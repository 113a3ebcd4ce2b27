"""The config file: defaults for any option, for every command or for one.

``config.toml`` (``kvl doctor`` prints where) holds option names as keys, written as on the
command line without the dashes (``image-max-tokens`` or ``image_max_tokens``). Top-level keys
apply to every command that has the option; a table applies to one command::

    threads = 2
    model = "kimi-vl-a3b-thinking-2506"

    [caption]
    detail = "short"
    temperature = 0.2

Precedence: a flag ▸ its environment variable (KVL_MODEL, KVL_REPACK…) ▸ this file ▸ the built-in
default. Click applies the file as its "default map", so values are checked like flags; a bad
key or value is one error naming the file, the table and the key (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from . import paths
from .errors import UsageError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass
class Config:
    path: Path
    globals: dict[str, Any] = field(default_factory=dict)
    commands: dict[str, dict[str, Any]] = field(default_factory=dict)

    def raw_for(self, command: str) -> dict[str, Any]:
        return {**self.globals, **self.commands.get(command, {})}


def load(path: Path | None = None) -> Config:
    """Read the config file (a missing file is an empty config)."""
    path = path or paths.config_file()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the config file ({exc})", hint="fix or remove it") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})", hint="fix or remove it") from None
    cfg = Config(path)
    for key, value in data.items():
        if isinstance(value, dict):
            cfg.commands[key] = {_norm(k): v for k, v in value.items()}
        else:
            cfg.globals[_norm(key)] = value
    return cfg


def _norm(key: str) -> str:
    return key.strip().replace("-", "_")


def param_for(command: click.Command, key: str) -> click.Parameter | None:
    for param in command.params:
        names = {param.name or ""} | {o.lstrip("-").replace("-", "_") for o in getattr(param, "opts", [])}
        if key in names and isinstance(param, click.Option):
            return param
    return None


def default_map(cfg: Config, name: str, command: click.Command, known_commands: list[str]) -> dict[str, Any]:
    """Click's default map for ``command``: this file's values for its options, each checked."""
    unknown_tables = set(cfg.commands) - set(known_commands)
    if unknown_tables:
        table = sorted(unknown_tables)[0]
        raise UsageError(f"{cfg.path}: [{table}] is not a kvl command", hint=f"tables: {', '.join(known_commands)}")
    out: dict[str, Any] = {}
    own = cfg.commands.get(name, {})
    for key, value in cfg.raw_for(name).items():
        param = param_for(command, key)
        if param is None:
            if key in own:  # a global key the command lacks is for other commands
                raise UsageError(f"{cfg.path}: [{name}] {key}: kvl {name} has no such option",
                                 hint=f"see kvl {name} --help")
            continue
        where = f"[{name}] {key}" if key in own else key
        try:
            with click.Context(command) as ctx:
                param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise UsageError(f"{cfg.path}: {where} = {value!r}: {exc.message}", hint="fix the value or remove it") \
                from None
        out[param.name or key] = value
    return out
