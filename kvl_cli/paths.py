"""Where kvl keeps its files. ``KVL_HOME`` moves everything under one folder (tests use it)."""

from __future__ import annotations

import os
from pathlib import Path

APP = "kvl"


def home() -> Path | None:
    value = os.environ.get("KVL_HOME")
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """Pulled models live here: ``<data>/models/<name>/<files>``."""
    base = home()
    if base is not None:
        return base
    from platformdirs import user_data_path

    return user_data_path(APP, appauthor=False)


def models_dir() -> Path:
    return data_dir() / "models"


def cache_dir() -> Path:
    base = home()
    if base is not None:
        return base / "cache"
    from platformdirs import user_cache_path

    return user_cache_path(APP, appauthor=False)


def config_file() -> Path:
    base = home()
    if base is not None:
        return base / "config.toml"
    from platformdirs import user_config_path

    return user_config_path(APP, appauthor=False) / "config.toml"
