"""kvl's real decoder process, with a decoder that crashes or hangs on marked inputs (for tests).

An image whose bytes contain ``KVL-CRASH`` kills the process with SIGSEGV, as a crash in a C
decoder would; ``KVL-HANG`` makes it sleep, as a decoder stuck in a loop would. Anything else is
decoded by the real code. Run as ``python tests/crashworker.py CAP``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvl_cli.media import decode_worker  # noqa: E402


def _bytes(req: dict, payload: bytes) -> bytes:
    if req.get("path"):
        path = Path(req["path"])
        return path.read_bytes() if path.is_file() else b""
    return payload


def faulty(op):  # type: ignore[no-untyped-def]
    def run(req, payload):  # type: ignore[no-untyped-def]
        data = _bytes(req, payload)
        if b"KVL-CRASH" in data:
            os.kill(os.getpid(), signal.SIGSEGV)
        if b"KVL-HANG" in data:
            time.sleep(3600)
        return op(req, payload)
    return run


for name in ("image.header", "image.decode"):
    decode_worker.OPS[name] = faulty(decode_worker.OPS[name])

if __name__ == "__main__":
    decode_worker.main(sys.argv[1:])
