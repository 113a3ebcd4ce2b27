"""The native side: importing llama-cpp-python, routing its logs, and what the build supports.

llama.cpp, ggml, clip and libmtmd all log to stderr by default. kvl routes every one of them
through one callback: dropped unless ``verbose``, but the last error lines are kept so that a
failed load can say what llama.cpp complained about.
"""

from __future__ import annotations

import collections
import ctypes
import os
import sys
from types import ModuleType
from typing import Any, TypeVar

from ..errors import EngineError

_LOG_LEVEL_ERROR = 4
_LOG_LEVEL_WARN = 3
_state: dict[str, Any] = {"verbose": False, "installed": False, "callback": None}
recent_errors: collections.deque[str] = collections.deque(maxlen=8)
T = TypeVar("T")
CALLBACK_CODES: set[Any] = set()  # Python functions that native code calls (see ``native_callback``)


def native_callback(fn: T) -> T:
    """Mark ``fn`` as called from native code: a KeyboardInterrupt raised inside it would be lost
    (ctypes prints it and goes on), so ``kvl_cli.signals`` does not raise there."""
    CALLBACK_CODES.add(fn.__code__)  # type: ignore[attr-defined]
    return fn


def llama() -> ModuleType:
    """Import ``llama_cpp`` (slow: it loads the native library) or say how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EngineError(
            f"llama-cpp-python is not installed or failed to load ({exc})",
            hint="pip install 'llama-cpp-python>=0.3.36,<0.4'",
        ) from None
    return llama_cpp


def mtmd() -> ModuleType:
    try:
        from llama_cpp import mtmd_cpp
    except (ImportError, OSError) as exc:  # pragma: no cover - depends on the install
        raise EngineError(
            f"this llama-cpp-python has no libmtmd ({exc})",
            hint="reinstall llama-cpp-python>=0.3.36 built with multimodal support",
        ) from None
    return mtmd_cpp


@native_callback  # it runs on whichever thread logs: the main one too
def _on_log(level: int, text: bytes | None, _user: Any) -> None:
    if not text:
        return
    line = text.decode("utf-8", errors="replace")
    if level in (_LOG_LEVEL_ERROR, _LOG_LEVEL_WARN) and line.strip():
        recent_errors.append(line.strip())
    if _state["verbose"]:
        sys.stderr.write(line)
        sys.stderr.flush()


def install_log_router(verbose: bool) -> None:
    """Route llama.cpp, ggml, clip and libmtmd logs through kvl (once per process)."""
    _state["verbose"] = verbose
    if _state["installed"]:
        return
    lib = llama()
    mt = mtmd()
    callback = lib.llama_log_callback(_on_log)
    _state["callback"] = callback  # keep a reference: the C side holds only a pointer
    lib.llama_log_set(callback, ctypes.c_void_p(0))
    mt.mtmd_log_set(callback, ctypes.c_void_p(0))
    mt.mtmd_helper_log_set(callback, ctypes.c_void_p(0))
    _state["installed"] = True


def last_error(default: str = "") -> str:
    """The most telling line llama.cpp logged recently (errors preferred)."""
    for line in reversed(recent_errors):
        if "error" in line.lower() or "failed" in line.lower() or "mismatch" in line.lower():
            return line
    return recent_errors[-1] if recent_errors else default


def system_info() -> str:
    return llama().llama_print_system_info().decode("utf-8", errors="replace").strip()


def gpu_offload_supported() -> bool:
    return bool(llama().llama_supports_gpu_offload())


def backend_name() -> str:
    """Which accelerator this llama-cpp-python was built for: CUDA, Metal, Vulkan, ... or CPU."""
    info = system_info().upper()
    lib_dir = os.path.join(os.path.dirname(llama().__file__ or ""), "lib")
    names = " ".join(os.listdir(lib_dir)).upper() if os.path.isdir(lib_dir) else ""
    for name in ("CUDA", "METAL", "VULKAN", "HIP", "SYCL", "OPENCL"):
        if f"GGML-{name}" in names or f"{name} :" in info or f"{name} =" in info:
            return "ROCm/HIP" if name == "HIP" else name.title() if name != "CUDA" else "CUDA"
    if gpu_offload_supported():
        return "GPU"
    return "CPU"


def cpu_features() -> dict[str, bool]:
    """CPU features that matter to llama.cpp, read from its own system info."""
    features: dict[str, bool] = {}
    for part in system_info().replace("|", "\n").splitlines():
        if "=" in part:
            key, _, value = part.partition("=")
            key = key.strip().split(":")[-1].strip()
            if key and value.strip() in ("0", "1"):
                features[key] = value.strip() == "1"
    return features


def physical_cores() -> int:
    """Physical cores (llama.cpp runs best with one thread per core, not per hyperthread)."""
    n = _linux_cores() or (_macos_cores() if sys.platform == "darwin" else 0)
    if n:
        return n
    cpus = os.cpu_count() or 1
    return max(1, cpus // 2 if cpus > 4 else cpus)


def _linux_cores() -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; 0 when it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return 0
    cores = set()
    for block in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" in fields:
            cores.add((fields.get("physical id"), fields["core id"]))
    return len(cores)


def _macos_cores() -> int:  # pragma: no cover - macOS only
    import subprocess

    try:
        out = subprocess.run(["sysctl", "-n", "hw.perflevel0.physicalcpu"], capture_output=True, text=True)
    except OSError:
        return 0
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else 0
