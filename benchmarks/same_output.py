"""The same inputs through two kvl trees: are stdout, stderr and the exit code byte-identical?

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/same_output.py --before /tmp/before        # against this tree

A refactoring must not change what a user sees. This runs a fixed set of commands (captions,
OCR, questions, --json, --dry-run, --schema/--choices, batches with bad inputs, --skip-done,
video summaries and scenes, bad flags) on the toy pairs, once per tree, with this virtual
environment's Python (``PYTHONPATH`` picks the tree) and a fresh ``KVL_HOME`` each, and prints
each case that differs. Numbers that measure time are blanked first (timings, load_s, decode_s);
everything else must match. Exit 1 when a case differs.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SECONDS = re.compile(r'("(?:[a-z_]+_s|think_s)": )[0-9.]+|\d+(?:\.\d+)? ?s\b|(?<=in )\d+(?:\.\d+)? s')


def make_inputs(folder: Path) -> dict[str, Path]:
    from PIL import Image

    from kvl_cli.synthetic import write_toy_pair
    from tests.clips import write_clips

    scripted = write_toy_pair(folder / "scripted", scripted=True)
    rnd = write_toy_pair(folder / "random", scripted=False, seed=7)
    files = {"model": scripted[0], "mmproj": scripted[1], "rmodel": rnd[0], "rmmproj": rnd[1]}
    for name, size, colour in (("red", (96, 64), (200, 40, 40)), ("blue", (64, 96), (30, 60, 210)),
                               ("green", (80, 80), (40, 180, 60))):
        files[name] = folder / f"{name}.png"
        Image.new("RGB", size, colour).save(files[name])
    files["broken"] = folder / "broken.jpg"
    files["broken"].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    files["empty"] = folder / "empty.png"
    files["empty"].write_bytes(b"")
    (folder / "clips").mkdir()
    clips = write_clips(folder / "clips")
    files["clip"] = clips["fade"]
    files["schema"] = folder / "schema.json"
    files["schema"].write_text('{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}')
    files["list"] = folder / "list.txt"
    files["list"].write_text(f"{files['red']}\n# a comment\n{folder / 'missing.png'}\n{files['blue']}\n")
    files["done"] = folder / "done.jsonl"
    return files


def cases(f: dict[str, Path]) -> list[tuple[str, list[str], bytes | None]]:
    pair = ["--model", str(f["model"]), "--mmproj", str(f["mmproj"]), "--no-server"]
    rpair = ["--model", str(f["rmodel"]), "--mmproj", str(f["rmmproj"]), "--no-server", "--temperature", "0"]
    r, b, g = str(f["red"]), str(f["blue"]), str(f["green"])
    return [
        ("caption", ["caption", r, *pair], None),
        ("caption-json-batch", ["caption", "--json", r, b, g, *pair], None),
        ("caption-short-P1", ["caption", "--detail", "short", "-P", "1", r, b, *pair], None),
        ("caption-bad-inputs", ["caption", r, str(f["broken"]), "missing.png", str(f["empty"]), b, *pair], None),
        ("caption-bad-json", ["caption", "--json", str(f["broken"]), r, "missing.png", *pair], None),
        ("caption-from", ["caption", "--json", "--from", str(f["list"]), *pair], None),
        ("caption-stdin-names", ["caption", "--json", *pair], f"{r}\n{b}\n".encode()),
        ("caption-stdin-image", ["caption", "-", *pair], f["green"].read_bytes()),
        ("caption-shard", ["caption", "--json", "--shard", "1/2", r, b, g, *pair], None),
        ("ocr-md", ["ocr", "--format", "markdown", r, *pair], None),
        ("ocr-dry-run", ["ocr", "--dry-run", r, b, *pair], None),
        ("ocr-dry-run-json", ["ocr", "--dry-run", "--json", r, "missing.png", *pair], None),
        ("ask", ["ask", r, b, "What changed?", *pair], None),
        ("ask-json-show", ["ask", "--json", "--show-thinking", r, "What is it?", *pair], None),
        ("ask-stdin-question", ["ask", r, *pair], b"What colour?\n"),
        ("ask-choices", ["ask", "--json", "--choices", "yes,no", r, "Is it red?", *rpair, "--seed", "3"], None),
        ("ask-schema", ["ask", "--json", "--schema", str(f["schema"]), r, "How many?", *rpair, "--seed", "5",
                        "--think-budget", "4", "--max-tokens", "64"], None),
        ("ask-random-limit", ["ask", r, "Go on", *rpair, "--max-tokens", "12"], None),
        ("ask-missing", ["ask", "missing.png", "What?", *pair], None),
        ("ask-no-question", ["ask", r, *pair], None),
        ("bad-image-tokens", ["caption", "--image-max-tokens", "4", r, *pair], None),
        ("schema-and-choices", ["ask", "--schema", "{}", "--choices", "a,b", r, "q", *pair], None),
        ("video", ["video", str(f["clip"]), *pair, "--max-frames", "4"], None),
        ("video-json", ["video", "--json", str(f["clip"]), "missing.mp4", *pair, "--max-frames", "3"], None),
        ("video-scenes", ["video", "--scenes", str(f["clip"]), *pair], None),
        ("video-scenes-srt", ["video", "--scenes", "--format", "srt", str(f["clip"]), *pair, "-P", "1"], None),
        ("video-scenes-dry-json", ["video", "--scenes", "--dry-run", "--json", "missing.mp4", str(f["clip"]), *pair],
         None),
        ("video-dry-run", ["video", "--dry-run", str(f["clip"]), *pair, "--max-frames", "2"], None),
        ("ask-video", ["ask", str(f["clip"]), "What happens?", *pair], None),
        ("video-bad-range", ["video", "--start", "5", "--end", "2", str(f["clip"]), *pair], None),
        ("models-json", ["models", "--json"], None),
    ]


def run_tree(tree: Path, files: dict[str, Path], work: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, args, stdin in cases(files):
        home = work / f"home-{tree.name}-{name}"
        env = {**os.environ, "PYTHONPATH": str(tree), "KVL_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "100"}
        for var in ("KVL_MODEL", "KVL_MMPROJ", "KVL_CACHE_SIZE"):
            env.pop(var, None)
        p = subprocess.run([sys.executable, "-m", "kvl_cli", *args], input=stdin or b"", capture_output=True,
                           env=env, cwd=work, timeout=600)
        text = (f"exit {p.returncode}\n--- stdout\n{p.stdout.decode('utf-8', 'replace')}"
                f"--- stderr\n{p.stderr.decode('utf-8', 'replace')}")
        out[name] = SECONDS.sub(lambda m: (m.group(1) or "") + "#", text).replace(str(home), "$HOME")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="the other tree (a git worktree)")
    ap.add_argument("--after", type=Path, default=REPO, help="this tree by default")
    ap.add_argument("--keep", type=Path, default=None, help="write each case's output here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = make_inputs(work)
        before, after = run_tree(a.before, files, work), run_tree(a.after, files, work)
    differ = [name for name in before if before[name] != after[name]]
    for name in before:
        if a.keep is not None:
            a.keep.mkdir(parents=True, exist_ok=True)
            (a.keep / f"{name}.before").write_text(before[name])
            (a.keep / f"{name}.after").write_text(after[name])
        print(f"{'DIFFERS' if name in differ else 'same   '}  {name}")
    print(f"{len(before) - len(differ)} of {len(before)} cases byte-identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
