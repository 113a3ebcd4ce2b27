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


def index_file() -> Path:
    """``kvl index`` and ``kvl search``'s default index (``--index FILE`` for another)."""
    return data_dir() / "index.sqlite"


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


def state_dir() -> Path:
    """What kvl keeps between runs that is neither data nor cache: ``kvl chat``'s prompt history."""
    base = home()
    if base is not None:
        return base / "state"
    from platformdirs import user_state_path

    return user_state_path(APP, appauthor=False)


def runtime_dir() -> Path:
    """Records of running ``kvl serve`` processes (one JSON file per server)."""
    base = home()
    if base is not None:
        return base / "run"
    import warnings

    from platformdirs import user_runtime_path

    with warnings.catch_warnings():  # no XDG_RUNTIME_DIR: platformdirs falls back to /tmp/runtime-UID, and warns
        warnings.simplefilter("ignore")
        return user_runtime_path(APP, appauthor=False)
