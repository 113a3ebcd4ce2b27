"""Which inputs of a run have their one record yet: counted from the rows the driver receives and,
after a lost round, from the part files; what is still missing runs again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import batch_exit_code
from .inputs import Row
from .parts import Store, record_key, records_in, succeeded


@dataclass
class Tally:
    rows: dict[str, Row]  # key -> the input's row (a video's, for scenes)
    video: bool
    seen: set[str] = field(default_factory=set)
    exit_codes: list[int] = field(default_factory=list)  # one per failed record
    ok: int = 0
    scene_total: dict[str, int] = field(default_factory=dict)
    scene_seen: dict[str, set[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: list[Row], video: bool) -> Tally:
        return cls({r["key"]: r for r in rows}, video)

    def add(self, key: str, ok: bool, file: str = "", scenes: int = 0, exit_code: int = 0) -> bool:
        """A record arrived; False when this key already has one (it is then not written again)."""
        if key in self.seen:
            return False
        self.seen.add(key)
        if ok:
            self.ok += 1
        else:
            self.exit_codes.append(exit_code or 1)
        if self.video and key != file and "#" in key:
            self.scene_total[file] = scenes
            self.scene_seen.setdefault(file, set()).add(int(key.rsplit("#", 1)[1]))
        return True

    def add_record(self, record: dict[str, Any]) -> bool:
        return self.add(record_key(record), succeeded(record), str(record.get("file", "")),
                        int(record.get("scenes") or 0), int(record.get("exit_code") or 0))

    def from_parts(self, store: Store) -> list[bool]:
        """Records a lost round wrote before the driver heard of them: whether each new one succeeded."""
        new = []
        for name in store.names():
            for record in records_in(store.read(name)):
                key = record_key(record)
                owner = str(record.get("file", key)) if self.video else key
                if owner in self.rows and self.add_record(record):
                    new.append(succeeded(record))
        return new

    def missing(self) -> list[Row]:
        """The inputs without their record; a video with the scenes it still needs (``skip``: the others)."""
        out = []
        for key, row in self.rows.items():
            if key in self.seen:
                continue
            if not self.video:
                out.append(row)
                continue
            got = self.scene_seen.get(key, set()) | set(row.get("skip", ()))
            n = self.scene_total.get(key)
            if n is None or len(got) < n:
                out.append({**row, "skip": sorted(got)})
        return out

    @property
    def failed(self) -> int:
        return len(self.exit_codes)

    def exit_code(self) -> int:
        return batch_exit_code(self.exit_codes, self.ok)
