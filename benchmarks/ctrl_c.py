"""How soon kvl answers Ctrl-C (or SIGTERM) in each phase, on the full-size synthetic model.

    .venv/bin/python benchmarks/ctrl_c.py                           # SIGINT in every phase
    .venv/bin/python benchmarks/ctrl_c.py --signal TERM --phases encode,prefill --repeat 3

Each phase is one run of ``kvl video --verbose --no-cache --max-frames 2 clip.mp4`` (its frames
are encoded after the load, on their own, so load, encode, prefill and generation come one after
the other) with the full-size pair from ``.bench/models`` (written by ``benchmarks/run.py`` or
``kvl_cli.synthetic.write_full_pair`` if it is not there: about 11 GB). The ``batch-encode`` phase
runs ``kvl caption -P 2`` on two photos instead: two CPU workers encoding on their own threads.
The script reads kvl's progress lines on stderr (``kvl: loading model``, ``kvl: encoding image``,
``kvl: reading prompt``, ``kvl: thinking``), sends the signal ``--delay`` seconds after the phase's
line (unless the next phase began by then: the run is then repeated with half the delay) to the
process group, as a terminal's Ctrl-C does (``--pid-only``: to kvl alone, as ``kill PID`` does),
and times from the signal to kvl's "interrupted" line and to the process's exit. The exit code
(130 / 143) and the last stderr line are checked. The ``floor`` row is no kvl at all: a process
that has read every page of the text model, killed; the kernel's teardown of that mapping is part
of every exit after a prompt was evaluated. Results as a Markdown table, and JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / ".bench" / "models"
MODEL = MODELS / "synthetic-Kimi-VL-A3B-Q4_K_M.gguf"
MMPROJ = MODELS / "mmproj-synthetic-Kimi-VL-A3B-Q8_0.gguf"
# phase -> (its progress line, which occurrence): the second "reading prompt" is the first frame's
# embeddings (the first is the short text before it)
PHASES = {"load": ("kvl: loading model", 1), "encode": ("kvl: encoding image", 1),
          "prefill": ("kvl: reading prompt", 2), "generation": ("kvl: thinking", 1),
          "batch-encode": ("kvl: encoding image", 1)}


@dataclass
class Measure:
    phase: str
    signal: str
    delay_s: float
    latency_s: float | None  # signal -> process exit
    said_s: float | None  # signal -> kvl's "interrupted" / "terminated" line
    exit_code: int | None
    last_line: str
    note: str = ""


def ensure_inputs(work: Path) -> tuple[Path, list[Path]]:
    """The full-size pair (written if missing), a 4-second 640x360 clip and two photos."""
    sys.path.insert(0, str(REPO))
    if not (MODEL.exists() and MMPROJ.exists()):
        from kvl_cli.synthetic import write_full_pair

        print("writing the full-size synthetic pair (about 11 GB)", file=sys.stderr)
        write_full_pair(MODELS)
    import cv2
    import numpy as np

    work.mkdir(parents=True, exist_ok=True)
    clip = work / "ctrl-c.mp4"
    rng = np.random.default_rng(0)
    if not clip.exists():
        out = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (640, 360))
        for i in range(40):
            out.write((rng.random((360, 640, 3)) * 255).astype(np.uint8) if i % 10 == 0 else
                      np.full((360, 640, 3), i * 6, np.uint8))
        out.release()
    photos = []
    for k in range(2):
        photo = work / f"ctrl-c-{k}.png"
        if not photo.exists():
            cv2.imwrite(str(photo), (rng.random((488, 640, 3)) * 255).astype(np.uint8))
        photos.append(photo)
    return clip, photos


def command(phase: str, clip: Path, photos: list[Path], threads: int | None) -> list[str]:
    kvl = [sys.executable, "-m", "kvl_cli"]
    common = ["--verbose", "--no-cache", "--max-tokens", "64"] + (["--threads", str(threads)] if threads else [])
    if phase == "batch-encode":
        return kvl + ["caption", "-P", "2", *common, *map(str, photos)]
    return kvl + ["video", *common, "--max-frames", "2", str(clip)]


def measure(phase: str, sig: signal.Signals, delay: float, cmd: list[str], env: dict[str, str],
            group: bool) -> Measure:
    marker, occurrence = PHASES[phase]
    # SIGINT as a terminal's kvl has it (a background job starts with it ignored), in a process group
    # of its own: Ctrl-C at a terminal signals the whole foreground group (kvl's video decoder too)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
    lines: list[tuple[float, str]] = []
    seen = threading.Event()

    def read() -> None:
        assert p.stderr is not None
        count = 0
        for line in p.stderr:
            lines.append((time.monotonic(), line.rstrip("\n")))
            count += line.startswith(marker)
            if count == occurrence:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    threading.Thread(target=lambda: p.stdout.read() if p.stdout else None, daemon=True).start()
    if not seen.wait(1800):
        p.kill()
        return Measure(phase, sig.name, delay, None, None, None, "", f"never saw {marker!r}")
    t_mark = time.monotonic()
    time.sleep(delay)
    t_sig = time.monotonic()
    if group:
        os.killpg(p.pid, sig)
    else:
        p.send_signal(sig)
    p.wait()
    latency = time.monotonic() - t_sig
    reader.join(5)
    ours = [text for _, text in lines if text.startswith("kvl:")]
    moved_on = [text for t, text in lines
                if t_mark <= t < t_sig and text.startswith("kvl: ") and not text.startswith(marker)]
    note = f"phase over before the signal ({moved_on[0]!r})" if moved_on else ""
    said = [t - t_sig for t, text in lines if text in ("kvl: interrupted", "kvl: terminated")]
    return Measure(phase, sig.name, delay, round(latency, 3), round(said[0], 3) if said else None, p.returncode,
                   ours[-1] if ours else "", note)


FLOOR = """
import mmap, sys
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    total = sum(m[off] for off in range(0, len(m), 4096))
print("touched", flush=True)
sys.stdin.read()
"""


def floor(sig: signal.Signals) -> Measure:
    """The kernel's share of any exit: a process that has read every page of the text model (as
    kvl has once it has evaluated a prompt) and is killed: the time to tear down that mapping."""
    p = subprocess.Popen([sys.executable, "-c", FLOOR, str(MODEL)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None
    p.stdout.readline()
    time.sleep(0.5)
    t_sig = time.monotonic()
    p.send_signal(signal.SIGKILL)
    p.wait()
    return Measure("floor", "SIGKILL", 0.5, round(time.monotonic() - t_sig, 3), None, p.returncode, "",
                   "no kvl: the kernel unmapping 10.5 GB of model that a process has read")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="load,encode,prefill,generation,batch-encode,floor")
    ap.add_argument("--signal", choices=["INT", "TERM"], default="INT")
    ap.add_argument("--delay", type=float, default=1.0, help="seconds into the phase (default 1)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--pid-only", action="store_true",
                    help="signal kvl's process only (as `kill PID` does), not its process group (as Ctrl-C does)")
    ap.add_argument("--tree", type=Path, default=REPO,
                    help="the kvl source tree to run (e.g. `git archive` of an older commit, to compare)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    clip, photos = ensure_inputs(REPO / ".bench" / "ctrl-c")
    sig = signal.Signals[f"SIG{args.signal}"]
    env = {**os.environ, "KVL_MODEL": str(MODEL), "KVL_MMPROJ": str(MMPROJ),
           "KVL_HOME": str(REPO / ".bench" / "ctrl-c" / "home"), "PYTHONPATH": str(args.tree)}
    results = []
    for phase in args.phases.split(","):
        for _ in range(args.repeat):
            if phase == "floor":
                results.append(floor(sig))
                print(f"floor: {results[-1].latency_s} s", file=sys.stderr)
                continue
            delay = args.delay
            m = measure(phase, sig, delay, command(phase, clip, photos, args.threads), env, not args.pid_only)
            while m.note.startswith("phase over") and delay > 0.1:
                delay /= 2
                m = measure(phase, sig, delay, command(phase, clip, photos, args.threads), env, not args.pid_only)
            results.append(m)
            print(f"{m.phase:13} said {m.said_s} s, exited {m.latency_s} s, exit {m.exit_code} {m.last_line!r}",
                  m.note, file=sys.stderr)
    if args.json:
        print(json.dumps([asdict(m) for m in results], indent=2))
        return
    print("| phase | signal | sent after | message after | exited after | exit | last line |\n"
          "|---|---|---|---|---|---|---|")
    for m in results:
        print(f"| {m.phase} | {m.signal} | {m.delay_s:.2f} s | {_secs(m.said_s)} | {_secs(m.latency_s)} | "
              f"{m.exit_code} | `{m.last_line}` |" + (f" {m.note}" if m.note else ""))


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


if __name__ == "__main__":
    main()
