"""``--output DIR``: JSON Lines part files, each written whole by the worker that ran its inputs.

A part holds the records of one batch of a worker and is named by a hash of that batch's keys, and
it appears all at once (written aside, then renamed; an object store's put is atomic): a batch that
Ray runs again after losing a node writes the same name again, so no record is ever there twice.
The parts are also what ``--skip-done DIR`` reads to resume.

A node that is cut off from the cluster (a network partition) but still running is a zombie: Ray
counts its batch lost and runs it again elsewhere, in a later round, batched differently, while the
zombie may still finish its batch and write it. Rounds are fenced against that: the driver writes
the round it is in to ``.kvl-round`` in the folder before the round starts, each worker knows its
round and writes a part only while that file still names it, and after the last round the file
says the run is closed. What slips through the moment between a worker's check and its write is
taken out when the run ends (``dedupe``): every key keeps exactly one record.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..pages import page_key

PREFIX = "part-"
SUFFIX = ".jsonl"
FENCE = ".kvl-round"


def record_key(record: dict[str, Any]) -> str:
    """An image's label; a document's page's ``DOC#page=N``; a scene's ``FILE#N``; a video that failed
    as a whole, its label."""
    if "input" in record:
        page = record.get("page")
        return page_key(str(record["input"]), page if isinstance(page, int) else None)
    scene = record.get("scene")
    return f"{record['file']}#{scene}" if scene is not None else str(record["file"])


def succeeded(record: dict[str, Any]) -> bool:
    return record.get("error") is None and record.get("finish_reason") != "interrupted"


class Store:
    """A folder on a local (shared) disk or behind a pyarrow filesystem URI."""

    def __init__(self, where: str) -> None:
        from .inputs import is_uri

        self.where = where
        self.remote = is_uri(where)
        if self.remote:
            import pyarrow.fs as pafs

            self.fs, self.base = pafs.FileSystem.from_uri(where)
        else:
            self.base = os.path.abspath(os.path.expanduser(where))

    def ensure(self) -> None:
        if self.remote:
            self.fs.create_dir(self.base, recursive=True)
        else:
            os.makedirs(self.base, exist_ok=True)

    def path(self, name: str) -> str:
        return f"{self.base.rstrip('/')}/{name}"

    def write(self, name: str, text: str) -> None:
        data = text.encode("utf-8")
        if self.remote:
            with self.fs.open_output_stream(self.path(name)) as f:
                f.write(data)
            return
        tmp = self.path(f".{name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path(name))

    def names(self) -> list[str]:
        if self.remote:
            import pyarrow.fs as pafs

            infos = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
            found = [i.path.rsplit("/", 1)[-1] for i in infos if i.type == pafs.FileType.File]
        else:
            found = os.listdir(self.base) if os.path.isdir(self.base) else []
        return sorted(n for n in found if n.startswith(PREFIX) and n.endswith(SUFFIX))

    def read(self, name: str) -> str:
        if self.remote:
            with self.fs.open_input_stream(self.path(name)) as f:
                return bytes(f.read()).decode("utf-8", errors="replace")
        with open(self.path(name), encoding="utf-8", errors="replace") as f:
            return f.read()

    def read_or_none(self, name: str) -> str | None:
        try:
            return self.read(name)
        except (FileNotFoundError, OSError):
            return None

    def remove(self, name: str) -> None:
        if self.remote:
            self.fs.delete_file(self.path(name))
        else:
            os.remove(self.path(name))


def part_name(keys: Iterable[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(keys)).encode("utf-8")).hexdigest()[:20]
    return f"{PREFIX}{digest}{SUFFIX}"


def write_part(store: Store, records: list[dict[str, Any]]) -> str:
    name = part_name(record_key(r) for r in records)
    store.write(name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return name


def open_round(store: Store, round_id: str) -> None:
    """From now on only workers of ``round_id`` write parts."""
    store.write(FENCE, round_id)


def close_rounds(store: Store, run_id: str) -> None:
    """The run's rounds are over: no worker of theirs writes a part any more."""
    store.write(FENCE, f"{run_id} closed")


def write_current_part(store: Store, records: list[dict[str, Any]], round_id: str | None) -> str:
    """``write_part`` while ``round_id`` is the folder's round (always, without one); "" when a later
    round has begun or the run has ended: this worker's batch was given up on and runs elsewhere."""
    if round_id is not None and store.read_or_none(FENCE) != round_id:
        return ""
    return write_part(store, records)


def dedupe(store: Store) -> int:
    """Keep one record per key in the folder (a successful one where there is one); returns how
    many were taken out. Reads the parts twice rather than holding them: the keys are all it keeps."""
    chosen: dict[str, tuple[str, int, bool]] = {}  # key -> (part, place in it, succeeded)
    doubled: set[str] = set()  # the parts that hold a record that goes
    for name in store.names():
        for i, record in enumerate(records_in(store.read(name))):
            key, ok = record_key(record), succeeded(record)
            before = chosen.get(key)
            if before is None or (ok and not before[2]):
                chosen[key] = (name, i, ok)
            if before is not None:
                doubled.update({name, before[0]})
    removed = 0
    for name in sorted(doubled):
        records = list(records_in(store.read(name)))
        kept = [r for i, r in enumerate(records) if chosen[record_key(r)][:2] == (name, i)]
        removed += len(records) - len(kept)
        _replace(store, name, kept)
    return removed


def _rewrite_without(store: Store, name: str, keys: set[str]) -> None:
    _replace(store, name, [r for r in records_in(store.read(name)) if record_key(r) not in keys])


def _replace(store: Store, name: str, records: list[dict[str, Any]]) -> None:
    if records:
        store.write(name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    else:
        store.remove(name)


def records_in(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and ("input" in rec or "file" in rec):
            yield rec


@dataclass
class Done:
    """What a folder of parts already holds: keys with a successful record, scene counts per video,
    and which part holds each failed key (to take it out when that input runs again)."""

    ok: set[str] = field(default_factory=set)
    scenes: dict[str, int] = field(default_factory=dict)  # video label -> its number of scenes
    scene_ok: dict[str, set[int]] = field(default_factory=dict)  # video label -> scenes with a record
    failed: dict[str, str] = field(default_factory=dict)  # key -> part name

    def add(self, record: dict[str, Any], part: str | None = None) -> None:
        key = record_key(record)
        if succeeded(record):
            self.ok.add(key)
            self.failed.pop(key, None)
            if "scenes" in record and "file" in record:
                self.scenes[str(record["file"])] = int(record["scenes"])
                self.scene_ok.setdefault(str(record["file"]), set()).add(int(record["scene"]))
        elif key not in self.ok and part is not None:
            self.failed[key] = part

    def video_done(self, label: str) -> bool:
        n = self.scenes.get(label)
        return n is not None and len(self.scene_ok.get(label, ())) >= n


def scan(store: Store) -> Done:
    done = Done()
    for name in store.names():
        for record in records_in(store.read(name)):
            done.add(record, name)
    return done


def drop_failed(store: Store, done: Done, keys: set[str]) -> int:
    """Take the failed records of ``keys`` (about to run again) out of their parts, so that each
    input keeps exactly one record; returns how many were taken out."""
    by_part: dict[str, set[str]] = {}
    for key in keys & done.failed.keys():
        by_part.setdefault(done.failed[key], set()).add(key)
    for name, gone in by_part.items():
        _rewrite_without(store, name, gone)
    return sum(len(g) for g in by_part.values())
