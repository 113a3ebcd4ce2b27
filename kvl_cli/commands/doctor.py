from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any

import click

from .. import __version__, paths
from ..environment import env_flag


def _memory() -> dict[str, float]:
    info: dict[str, float] = {}
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    info[key] = int(value.split()[0]) / 2**20  # GiB
    except OSError:
        try:
            info["MemTotal"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        except (ValueError, OSError, AttributeError):
            pass
    return info


def settings() -> list[dict[str, Any]]:
    """Option defaults that do not come built in: from the environment, then the config file (in
    order of precedence; a flag on the command line beats both)."""
    from .. import config
    from .flags import ENV_OPTIONS

    rows: list[dict[str, Any]] = [{"key": name, "value": os.environ[env], "source": f"env {env}", "command": "*"}
            for name, env in ENV_OPTIONS.items() if os.environ.get(env)]
    cfg = config.load()
    shadowed = {r["key"] for r in rows}
    rows += [{"key": k, "value": v, "source": f"config {cfg.path}", "command": "*",
              "overridden": k in shadowed} for k, v in cfg.globals.items()]
    for command, table in cfg.commands.items():
        rows += [{"key": k, "value": v, "source": f"config {cfg.path}", "command": command,
                  "overridden": k in shadowed} for k, v in table.items()]
    return rows


def collect() -> dict[str, Any]:
    """Everything doctor reports, as data (also for --json and the tests)."""
    from ..engine import native
    from ..errors import KvlError
    from ..store.catalog import installed_models, resolve

    report: dict[str, Any] = {"kvl": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import llama_cpp

        report["llama_cpp_python"] = getattr(llama_cpp, "__version__", "?")
        report["backend"] = native.backend_name()
        report["gpu_offload"] = native.gpu_offload_supported()
        feats = native.cpu_features()
        report["cpu_features"] = {k: v for k, v in feats.items() if k in (
            "SSE3", "AVX", "AVX2", "F16C", "FMA", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16",
            "AMX_INT8", "NEON", "ARM_FMA", "SVE", "DOTPROD", "MATMUL_INT8", "METAL", "CUDA", "VULKAN")}
        report["amx"] = bool(feats.get("AMX_INT8"))
    except KvlError as exc:
        report["llama_cpp_python"] = None
        report["engine_error"] = str(exc)
    from ..engine.native import physical_cores

    report["physical_cores"] = physical_cores()
    report["default_threads"] = physical_cores()
    mem = _memory()
    report["ram_gib"] = {"total": round(mem.get("MemTotal", 0), 1), "available": round(mem.get("MemAvailable", 0), 1)}
    report["repack"] = env_flag("KVL_REPACK")
    report["settings"] = settings()
    report["paths"] = {"models": str(paths.models_dir()), "cache": str(paths.cache_dir()),
                       "config": str(paths.config_file()), "runtime": str(paths.runtime_dir())}
    report["installed"] = [{"name": m.ref, "folder": str(m.folder), "size": m.size} for m in installed_models()]
    try:
        model, mmproj, name = resolve(None, None)
        report["model"] = {"name": name, "model": str(model), "mmproj": str(mmproj)}
    except KvlError as exc:
        report["model"] = {"error": str(exc)}
    report["servers"] = servers()
    return report


def servers() -> list[dict[str, Any]]:
    """Running ``kvl serve`` processes (their records in the runtime folder) and what /health says."""
    from ..serve import record

    rows = []
    for rec in record.running():
        health = record.health(rec, timeout=1.0) or {"status": "not answering"}
        rows.append({"url": rec.url, "pid": rec.pid, "model": rec.model_name, "status": health.get("status"),
                     "running": health.get("running"), "queued": health.get("queued"), "auth": bool(rec.api_key)})
    return rows


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--debug", is_flag=True, hidden=True)
def doctor(as_json: bool, debug: bool) -> int:
    """Show what kvl sees: engine and its backend, CPU features, memory, paths, models.

    \b
      kvl doctor
      kvl doctor --json | jq .backend
    """
    report = collect()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return 0
    from rich.table import Table

    from ..render.base import make_console

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("kvl", report["kvl"])
    table.add_row("python", f"{report['python']} ({report['platform']})")
    table.add_row("llama-cpp-python", str(report.get("llama_cpp_python") or report.get("engine_error")))
    if report.get("llama_cpp_python"):
        table.add_row("backend", f"{report['backend']}" + (" (GPU offload)" if report["gpu_offload"] else ""))
        feats = report["cpu_features"]
        table.add_row("cpu features", " ".join(k for k, v in feats.items() if v) or "-")
        table.add_row("amx", "yes" if report["amx"] else "no")
    table.add_row("threads", f"{report['default_threads']} (physical cores)")
    table.add_row("memory", f"{report['ram_gib']['total']} GiB total, {report['ram_gib']['available']} GiB available")
    table.add_row("repack", "on (KVL_REPACK)" if report["repack"] else "off (default; --repack to try)")
    for row in report["settings"]:
        scope = "every command" if row["command"] == "*" else f"kvl {row['command']}"
        table.add_row(f"{row['key']}", f"{row['value']!r} ({row['source']}, {scope})")
    for key, value in report["paths"].items():
        table.add_row(f"{key} dir" if key != "config" else "config", value)
    model = report["model"]
    table.add_row("model", f"{model['name']}\n{model['model']}\n{model['mmproj']}" if "name" in model
                  else f"[yellow]{model['error']}[/]")
    for srv in report["servers"]:
        busy = f", {srv['running']} running, {srv['queued']} queued" if srv["status"] == "ok" else ""
        table.add_row("server", f"{srv['url']} (pid {srv['pid']}, {srv['model']}): {srv['status']}{busy}")
    if not report["servers"]:
        table.add_row("server", "none running (kvl serve)")
    make_console(highlight=True).print(table)
    return 0
