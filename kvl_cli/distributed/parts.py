"""``--output DIR``: JSON Lines part files, each written whole by the worker that ran its inputs.

A part holds the records of one batch of a worker and is named by a hash of that batch's keys, and
it appears all at once (written aside, then renamed; an object store's put is atomic): a batch that
Ray runs again after losing a node writes the same name again, so no record is ever there twice.
The parts are also what ``--skip-done DIR`` reads to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

PREFIX = "part-"
SUFFIX = ".jsonl"


def record_key(record: dict[str, Any]) -> str:
    """An image's label; a scene's ``FILE#N``; a video that failed as a whole, its label."""
    if "input" in record:
        return str(record["input"])
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
        kept = [r for r in records_in(store.read(name)) if record_key(r) not in gone]
        if kept:
            store.write(name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
        else:
            store.remove(name)
    return sum(len(g) for g in by_part.values())
