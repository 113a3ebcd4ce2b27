"""``--format srt|vtt`` with ``--output``: one subtitle file per video, written on the cluster.

After the captions, one task on the cluster reads the part files, groups the scene records by
video and writes each video's subtitles in scene order (the records are small: a caption per scene).
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

from ..media.video import Scene
from ..run.videos import SceneWriter
from .parts import Store, records_in, succeeded


def subtitle_names(videos: list[str], fmt: str) -> dict[str, str]:
    """``movie.srt`` for ``…/movie.mp4``; a stem two videos share gets a short hash of its label."""
    stems: dict[str, int] = {}
    for v in videos:
        stem = os.path.splitext(v.rstrip("/").rsplit("/", 1)[-1])[0] or "video"
        stems[stem] = stems.get(stem, 0) + 1
    names = {}
    for v in videos:
        stem = os.path.splitext(v.rstrip("/").rsplit("/", 1)[-1])[0] or "video"
        if stems[stem] > 1:
            stem += "-" + hashlib.sha256(v.encode("utf-8")).hexdigest()[:8]
        names[v] = f"{stem}.{fmt}"
    return names


def _write_all(where: str, fmt: str, names: dict[str, str]) -> int:
    """Runs as one task on the cluster: every part read once, each video's scenes written in order."""
    store = Store(where)
    by_video: dict[str, list[dict[str, Any]]] = {}
    for part in store.names():
        for r in records_in(store.read(part)):
            if succeeded(r) and r.get("scene") is not None:
                by_video.setdefault(str(r["file"]), []).append(r)
    for label, records in by_video.items():
        buf = io.StringIO()
        writer = SceneWriter(fmt, buf, multiple=False)
        for r in sorted(records, key=lambda r: int(r["scene"])):
            writer.write(label, Scene(int(r["scene"]), float(r["start"]), float(r["end"])), str(r.get("caption") or ""),
                         "")
        store.write(names.get(label, f"{label}.{fmt}".replace("/", "_")), buf.getvalue())
    return len(by_video)


def write_subtitles(ray: Any, store: Store, videos: list[str], fmt: str) -> int:
    """The subtitle files, written by a task on the cluster (not through the driver); how many."""
    task = ray.remote(num_cpus=1)(_write_all)
    return int(ray.get(task.remote(store.where, fmt, subtitle_names(videos, fmt))))
