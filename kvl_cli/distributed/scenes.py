"""The CPU stage of ``video --scenes`` on a cluster: each video probed and cut into scenes where it
lands (in kvl's decoder process), one row out per scene still to caption. A video that cannot be
read becomes one row with its error."""

from __future__ import annotations

import json
from typing import Any

from ..errors import KvlError
from ..media import video_sandbox
from ..run.videos import VideoArgs
from .inputs import error_fields, local_video

# A video's scene detection takes one CPU; it runs before the engine workers hold the CPUs (the
# scene rows, cut into batches, wait in the object store), so it gets all of them.
SCENE_STAGE_CPUS = 1.0


def find_scenes(item: dict[str, Any], args: VideoArgs) -> list[dict[str, str]]:
    """``flat_map``: a video's row → one row per scene (those in ``skip`` left out)."""
    row = json.loads(item["row"])
    label = row["key"]
    if "error" in row:
        return [item]
    try:
        path = local_video(row)
        info = video_sandbox.probe(path)
        scenes = video_sandbox.scenes(path, info, detector=args.detector, threshold=args.threshold,
                                      start=args.start, end=args.end)
    except KvlError as exc:
        return [{"key": label, "row": json.dumps({**row, **error_fields(exc)}, ensure_ascii=False)}]
    skip = set(row.get("skip", ()))
    where = {k: row[k] for k in ("path", "uri", "url") if k in row}
    facts = {"fps": info.fps, "frames": info.frames, "duration": info.duration, "width": info.width,
             "height": info.height}
    out = []
    for scene in scenes:
        if scene.index in skip:
            continue
        scene_row = {"key": f"{label}#{scene.index}", "file": label, "scene": scene.index, "start": scene.start,
                     "end": scene.end, "scenes": len(scenes), "info": facts, **where}
        out.append({"key": scene_row["key"], "row": json.dumps(scene_row, ensure_ascii=False)})
    return out
