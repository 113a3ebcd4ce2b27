"""Joining a Ray cluster, or starting one on this machine that stays on loopback.

``--ray local`` starts Ray here with every address it listens on set to 127.0.0.1: Ray otherwise
binds the machine's outward address, and a Ray cluster runs whatever code reaches it. A cluster
kvl joins (``auto``, ``HOST:PORT``) is the user's, with its own auth token (``RAY_AUTH_TOKEN`` or
``~/.ray/auth_token``), and is left running.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import warnings
from typing import Any

from ..errors import NetworkError, UsageError

LOOPBACK = "127.0.0.1"
LOCAL_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray keeps to loopback on any platform


def import_ray() -> Any:
    """Ray, or a usage error that says how to get it (kvl without the extra is unchanged)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--ray needs Ray, which is not installed",
                         hint="pip install 'kvl[ray]' (adds ray[data]), then run the command again") from None
    return ray


def _keep_local() -> None:
    """Ray reads this when it is imported (and its daemons inherit it): set it before, and on the
    constant itself when Ray was imported already. The local cluster also gets token auth, with a
    token made for this run (none is written to ~/.ray) unless the user has one."""
    os.environ[LOCAL_CLUSTER_ENV] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    has_token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") \
        or os.path.exists(os.path.expanduser("~/.ray/auth_token"))
    if not has_token:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    if "ray._private.ray_constants" in sys.modules:
        constants: Any = sys.modules["ray._private.ray_constants"]
        constants.ENABLE_RAY_CLUSTER = False


def connect(address: str, *, local_cpus: int, verbose: bool = False) -> Any:
    """``ray.init`` for ``--ray ADDRESS``; returns the ``ray`` module."""
    if address == "local":
        _keep_local()
    ray = import_ray()
    quiet(verbose)
    if ray.is_initialized():
        return ray
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING,
                              "configure_logging": True}
    try:
        if address == "local":
            ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=False, num_cpus=local_cpus,
                     **common)
        else:
            target = (os.environ.get("RAY_ADDRESS") or "auto") if address == "auto" else address
            ray.init(address=target, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = ("start one with `ray start --head` (or use --ray local), or set RAY_ADDRESS" if address == "auto"
                else "check the address and that `ray start` runs there (and RAY_AUTH_TOKEN for a token cluster)")
        raise NetworkError(f"cannot reach a Ray cluster at {address}: {str(exc).splitlines()[0]}", hint=hint) \
            from None
    return ray


def quiet(verbose: bool = False) -> None:
    """Ray Data's own progress bars and execution banners off (unless -v): kvl draws its own on
    stderr and reports a lost worker or node itself."""
    import ray.data

    warnings.filterwarnings("ignore", message=r".*ray_remote_args.*deprecated")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = -1  # a block lost with a worker is run again by kvl, not the end of the run
    for name in ("ray", "ray.data"):  # a lost worker's traceback is Ray Data's ERROR: kvl says it in one line
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.CRITICAL)


def disconnect(address: str) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()  # a local cluster stops with it; a joined one keeps running


def largest_node_cpus(ray: Any) -> float:
    return max((float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=0.0)


def cluster_resources(ray: Any) -> tuple[float, float]:
    """(CPUs, GPUs) the cluster has now."""
    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))
