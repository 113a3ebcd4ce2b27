"""Batches: inputs from a list file or stdin, resuming from earlier JSONL results, sharding.

* ``--from FILE`` (``-`` for stdin): one input per line; blank lines and ``#`` comments skipped.
* ``--skip-done OUT.jsonl``: inputs that already have a successful record in OUT.jsonl are skipped,
  so ``kvl caption --json --skip-done out.jsonl photos/ >> out.jsonl`` resumes an interrupted run.
  A missing file means nothing is done yet; a half-written last line (the run was killed while
  writing it) is ignored.
  Resuming into that same file (``>> out.jsonl``) after a run cut in the middle of a line starts a
  new line first, so the first new record is not glued onto the cut one.
* ``--shard K/N``: keep the inputs whose name hashes to K of N. Each machine runs the same command
  with its own K; the N shards cover every input exactly once, whatever order the files are listed in
  and however a path is spelled (``fx/a.png`` and ``./fx/a.png`` are one input; URLs as given).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from ..environment import Environment
from ..errors import InputError, UsageError
from ..limits import is_regular, max_input_bytes, oversized, read_file
from ..media.images import InputProblem, InputRef, expand_inputs
from ..options import BatchOptions, SidecarOptions
from ..pages import page_key

# a --json record is kilobytes (a long answer with its thinking: tens of kB); a line longer than
# this in a --skip-done file is not one of them
MAX_RECORD_CHARS = 16 * 1024 * 1024


def read_list(source: str, env: Environment) -> list[str]:
    """Inputs named one per line in ``source`` (a file, or ``-`` for stdin), read once and within
    ``KVL_MAX_INPUT_BYTES`` like any input (``--from /dev/zero`` is refused, not read forever)."""
    data = env.read_stdin() if source == "-" else read_file(Path(source).expanduser(), f"--from {source}")
    if b"\0" in data:
        raise InputError(f"--from {source}: a binary file, not a list", hint="give a text file with one input per line")
    return names_in(data)


def names_in(data: bytes) -> list[str]:
    """The names of a list, one per line, blank lines and ``#`` comments skipped: as the system spells
    them (bytes that are not UTF-8 kept, as for names given as arguments); lines end at \n only (a
    file name may hold \f or \v)."""
    lines = (line.strip() for line in data.decode("utf-8", "surrogateescape").split("\n"))
    return [line for line in lines if line and not line.startswith("#")]


# how the image formats kvl reads begin (each also holds a NUL byte near its start); HEIF/AVIF: a box
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"II*\x00", b"MM\x00*")


def input_names(inputs: tuple[str, ...], from_file: str | None, env: Environment) -> list[str]:
    """The arguments, plus ``--from``'s list; with neither and stdin not a terminal, stdin: a list of
    names (``find … | kvl caption``), or the image itself (``kvl caption < photo.jpg``: ``-``)."""
    args = list(inputs)
    if from_file:
        return args + read_list(from_file, env)
    if args or env.stdin_isatty:
        return args
    data = env.read_stdin()
    if not data:
        return []
    head = data[:4096]
    if b"\0" in head or head.startswith(IMAGE_MAGIC) or head[4:12].startswith(b"ftyp") or b"%PDF-" in head[:1024]:
        return ["-"]
    return names_in(data)


def input_key(label: str) -> str:
    """The name an input is known by across runs and machines: a local path normalised
    (``./fx//a.png`` is ``fx/a.png``), a URL or ``-`` as given."""
    if label == "-" or label.startswith(("http://", "https://")):
        return label
    return os.path.normpath(label)


def in_shard(label: str, shard: tuple[int, int]) -> bool:
    k, n = shard
    key = input_key(label).encode("utf-8", errors="surrogateescape")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % n == k - 1


Accept = Callable[[dict[str, Any]], bool]  # a task's own test of a record (locate: the same query and mode)


def done_inputs(path: str, accept: Accept | None = None) -> set[str]:
    """Inputs with a finished, error-free record in a JSONL results file (that ``accept`` accepts, if
    given). Lines that are not such a record are skipped: a line cut short when the earlier run was
    killed, a line longer than any record (read in bounded pieces, never whole), JSON nested too deep to parse."""
    p = Path(path).expanduser()
    if not p.exists():
        return set()
    if p.is_dir():
        raise UsageError(f"--skip-done {path} is a directory", hint="give the JSONL file that --json wrote")
    done: set[str] = set()
    # a results file is read to its end; a device or pipe (/dev/zero) has none: at most the input limit
    budget = None if is_regular(p) else max_input_bytes()
    with p.open(encoding="utf-8", errors="replace") as f:
        for line in _bounded_lines(f, budget, f"--skip-done {path}"):
            key = _done_key(line, accept)
            if key is not None:
                done.add(key)
    return done


def _bounded_lines(f: IO[str], budget: int | None, label: str) -> Iterator[str]:
    """The lines of ``f`` up to ``MAX_RECORD_CHARS`` each; a longer line is passed over, unheld.
    With a ``budget``, more characters than that in all is refused as oversized."""
    left = budget

    def take() -> str:
        nonlocal left
        piece = f.readline(MAX_RECORD_CHARS)
        if left is not None:
            left -= len(piece)
            if left < 0:
                raise oversized(label, budget or 0)
        return piece

    while line := take():
        if len(line) < MAX_RECORD_CHARS or line.endswith("\n"):
            yield line
            continue
        while (rest := take()) and not rest.endswith("\n"):
            pass


def _done_key(line: str, accept: Accept | None = None) -> str | None:
    if not line.lstrip().startswith("{"):
        return None  # every record is an object: anything else is not one of them
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return None  # cut short when the earlier run was killed, or not a record at all
    if (isinstance(rec, dict) and isinstance(rec.get("input"), str) and rec.get("error") is None
            and rec.get("finish_reason") not in (None, "interrupted") and (accept is None or accept(rec))):
        page = rec.get("page")  # a document's page is done by itself
        return page_key(input_key(rec["input"]), page if isinstance(page, int) and not isinstance(page, bool) else None)
    return None


def done_records(b: BatchOptions, accept: Accept | None = None) -> set[str]:
    """The inputs and pages ``--skip-done``'s file holds as done, read once for the whole run (the file
    may be a pipe, ``<(cat out.jsonl)``, which can be read only once)."""
    return done_inputs(b.skip_done, accept) if b.skip_done else set()


def done_pages(b: BatchOptions, task: str, done: set[str]) -> Callable[[str, int], bool] | None:
    """Whether a document's page is done already: its record among ``done`` (``done_records``), or its
    sidecars written (``doc.p3.txt``); None when neither is asked for."""
    if not b.skip_done and b.sidecars is None:
        return None
    writer = None
    if b.sidecars is not None and b.sidecars.kinds:
        from ..sidecars import SidecarWriter

        writer = SidecarWriter(b.sidecars, task)

    def skip(label: str, page: int) -> bool:
        return page_key(input_key(label), page) in done or (writer is not None and writer.done(label, page))

    return skip


def start_new_line(skip_done: str, out: IO[str]) -> None:
    """``--skip-done FILE … >> FILE`` after a run cut in the middle of a line: write a newline
    first, so the first new record starts a line of its own (the cut one stays ignored)."""
    try:
        fd = out.fileno()
        here, there = os.fstat(fd), os.stat(Path(skip_done).expanduser())
        appending = bool(_append_flag(fd)) or os.lseek(fd, 0, os.SEEK_CUR) == there.st_size
    except (OSError, ValueError, AttributeError):  # not a file (a pipe, a terminal, a test's buffer)
        return
    if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino) or not there.st_size or not appending:
        return
    with open(Path(skip_done).expanduser(), "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
    out.write("\n")
    out.flush()


def _append_flag(fd: int) -> int:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return 0
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND


def select(refs: list[InputRef], *, skip_done: str | None, shard: tuple[int, int] | None,
           done: set[str] | None = None) -> tuple[list[InputRef], int, int]:
    """Apply --skip-done (its records, ``done``, if already read) and --shard; return (kept, skipped
    as done, left to other shards)."""
    if done is None:
        done = done_inputs(skip_done) if skip_done else set()
    kept, n_done, n_other = [], 0, 0
    for ref in refs:
        if input_key(ref.label) in done:
            n_done += 1
        elif shard is not None and not in_shard(ref.label, shard):
            n_other += 1
        else:
            kept.append(ref)
    return kept, n_done, n_other


def batch_inputs(inputs: tuple[str, ...], b: BatchOptions, env: Environment, task: str = "caption",
                 done: set[str] | None = None) -> tuple[list[InputRef], list[InputProblem]]:
    """Arguments plus --from, then the inputs whose --sidecar files ``task`` wrote already, --skip-done
    (its records, ``done``, if already read: ``done_records``) and --shard; says on stderr what it
    skipped. Each problem keeps its place among the inputs that remain."""
    refs, problems = expand_inputs(input_names(inputs, b.from_file, env), stdin=env.read_stdin)
    if b.sidecars is not None:
        refs, problems = _without_sidecars(refs, problems, b.sidecars, task, env)
    if b.skip_done or b.shard:
        kept, n_done, n_other = select(refs, skip_done=b.skip_done, shard=b.shard, done=done)
        problems = _replace_problems(problems, refs, kept, b.shard)
        refs = kept
        notes = []
        if n_done:
            notes.append(f"{n_done} already done in {b.skip_done}")
        if b.shard and n_other:
            notes.append(f"{n_other} left to the other shards (this is {b.shard[0]}/{b.shard[1]})")
        if notes:
            env.stderr.write(f"kvl: skipping {', '.join(notes)}; {len(refs)} to run\n")
    if b.skip_done and (refs or problems):
        start_new_line(b.skip_done, env.stdout)
    return refs, problems


def _without_sidecars(refs: list[InputRef], problems: list[InputProblem], options: SidecarOptions, task: str,
                      env: Environment) -> tuple[list[InputRef], list[InputProblem]]:
    """The inputs whose sidecars are not all there yet (the sidecar is the resume mark); an input whose
    sidecars cannot be written (someone else's there) is a problem in its place, before the model loads."""
    from ..sidecars import conflicts, pending

    # a document's sidecars are its pages' (doc.p3.txt): which pages are done is known once it is opened
    kept = [ref for ref, todo in zip(refs, pending([r.label for r in refs], options, task), strict=True)
            if todo or ref.suffix == ".pdf"]
    if len(kept) < len(refs):
        env.stderr.write(f"kvl: skipping {len(refs) - len(kept)} with their sidecars already written "
                         f"(--overwrite to redo them); {len(kept)} to run\n")
    problems = _replace_problems(problems, refs, kept, None)
    found = conflicts([r.label for r in kept if r.suffix != ".pdf"], options, task)  # a page's: when written
    if not found:
        return kept, problems
    clear: list[InputRef] = []
    new: list[InputProblem] = []
    for ref in kept:  # each problem in its place: after the inputs that stay before it
        if ref.label in found:
            new.append(InputProblem(ref.label, found[ref.label], len(clear)))
        else:
            clear.append(ref)
    return clear, _replace_problems(problems, kept, clear, None) + new


def _replace_problems(problems: list[InputProblem], refs: list[InputRef], kept: list[InputRef],
                      shard: tuple[int, int] | None) -> list[InputProblem]:
    """Problems among the inputs ``select`` kept: each in its shard only, its place counted again."""
    kept_ids = {id(ref) for ref in kept}
    before = [0]  # kept inputs before each place in ``refs``
    for ref in refs:
        before.append(before[-1] + (id(ref) in kept_ids))
    return [InputProblem(p.label, p.error, None if p.at is None else before[p.at]) for p in problems
            if shard is None or in_shard(p.label, shard)]
