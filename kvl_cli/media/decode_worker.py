"""kvl's decoder process (see ``sandbox``): decodes what the parent asks for, replies with pixels.

Run as ``python -m kvl_cli.media.decode_worker MEMORY_CAP``. It reads requests on stdin and
writes replies on a copy of stdout (its own fd 1 then points at stderr, so a library that prints
cannot corrupt the stream). It ignores Ctrl-C and ends when its stdin closes.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import KvlError, UsageError
from .sandbox import Header, read_message, write_message

Reply = tuple[Header, "bytes | memoryview"]


def _source(req: Header, payload: bytes) -> Path | bytes:
    return Path(req["path"]) if req.get("path") else payload


def image_header(req: Header, payload: bytes) -> Iterator[Reply]:
    from .decode import check_header

    w, h = check_header(req["label"], _source(req, payload), pixels=req["pixels"], byte_limit=req["bytes"])
    yield {"done": True, "width": w, "height": h}, b""


def image_decode(req: Header, payload: bytes) -> Iterator[Reply]:
    from .decode import decode_rgb_sized

    img, (sw, sh) = decode_rgb_sized(req["label"], _source(req, payload), max_tokens=req.get("max_tokens"),
                                     pixels=req["pixels"], byte_limit=req["bytes"])
    yield {"done": True, "width": img.width, "height": img.height, "source_width": sw, "source_height": sh}, \
        img.tobytes()


def _info(req: Header) -> Any:
    from .video import VideoInfo

    i = req["info"]
    return VideoInfo(Path(req["path"]), i["fps"], i["frames"], i["duration"], i["width"], i["height"])


def video_probe(req: Header, payload: bytes) -> Iterator[Reply]:
    from .video import probe

    info = probe(Path(req["path"]))
    yield {"done": True, "fps": info.fps, "frames": info.frames, "duration": info.duration, "width": info.width,
           "height": info.height}, b""


def video_frames(req: Header, payload: bytes) -> Iterator[Reply]:
    from .video import FrameSampler

    sampler = FrameSampler(Path(req["path"]), fps=req.get("fps"), max_frames=req["max_frames"],
                           start=req.get("start"), end=req.get("end"), info=_info(req))
    for frame in sampler:
        rgb = frame.rgb
        yield {"frame": frame.time, "width": int(rgb.shape[1]), "height": int(rgb.shape[0])}, rgb.tobytes()
    yield {"done": True, "warning": sampler.warning, "decoded": sampler.decoded, "missing": sampler.missing}, b""


def video_scenes(req: Header, payload: bytes) -> Iterator[Reply]:
    from .scenes import detect_scenes

    scenes = detect_scenes(Path(req["path"]), detector=req["detector"], threshold=req.get("threshold"),
                           start=req.get("start"), end=req.get("end"), info=_info(req))
    yield {"done": True, "scenes": [[s.index, s.start, s.end] for s in scenes]}, b""


def doc_info(req: Header, payload: bytes) -> Iterator[Reply]:
    from .pdf import document_info

    info, with_text = document_info(req["label"], _source(req, payload), kind=req["kind"], password=req.get("password"),
                                    limit=req["limit"], pixels=req["pixels"], text_layer=bool(req.get("text_layer")))
    yield {"done": True, "pages": info.pages, "text_pages": with_text}, b""


def doc_page(req: Header, payload: bytes) -> Iterator[Reply]:
    from .pdf import render_page

    with render_page(req["label"], _source(req, payload), req["page"], kind=req["kind"],
                     password=req.get("password"), max_tokens=req.get("max_tokens"), dpi=req.get("dpi"),
                     pixels=req["pixels"]) as (width, height, rgb):
        yield {"done": True, "width": width, "height": height}, rgb  # written while the bitmap is open


def doc_text(req: Header, payload: bytes) -> Iterator[Reply]:
    from .pdf import page_text

    text = page_text(req["label"], _source(req, payload), req["page"], password=req.get("password"))
    yield {"done": True}, text.encode("utf-8", "replace")


OPS: dict[str, Callable[[Header, bytes], Iterator[Reply]]] = {
    "image.header": image_header, "image.decode": image_decode, "video.probe": video_probe,
    "video.frames": video_frames, "video.scenes": video_scenes, "doc.info": doc_info, "doc.page": doc_page,
    "doc.text": doc_text,
}


def _what(op: str) -> str:
    return "video" if op.startswith("video") else "document" if op.startswith("doc.") else "image"


def error_reply(req: Header, exc: BaseException) -> Header:
    """What the parent raises for this input: kvl's own error as it is, anything else named by its type."""
    if isinstance(exc, KvlError):
        return {"error": exc.message, "hint": exc.hint, "kind": "usage" if isinstance(exc, UsageError) else "input"}
    what = _what(req.get("op", ""))
    detail = " ".join(str(exc).split())[:200] or "no detail"
    return {"error": f"{req.get('label', '?')}: the {what} is damaged ({type(exc).__name__}: {detail})",
            "hint": "re-export or re-download it", "kind": "input"}


def _enter(req: Header) -> None:
    """Work from kvl's directory, so that a relative path means what it meant there."""
    if req.get("cwd"):
        try:
            os.chdir(req["cwd"])
        except OSError:
            req["path"] = req.get("abspath") or req.get("path")


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    while (msg := read_message(inp)) is not None:
        req, payload = msg
        try:
            _enter(req)
            for header, data in OPS[req["op"]](req, payload):
                write_message(out, header, data)
        except Exception as exc:  # the input's failure, reported; the helper goes on
            write_message(out, error_reply(req, exc))


def _limit_memory(cap: int) -> None:
    """Cap the data segment (heap and anonymous mappings, not shared libraries): Linux enforces
    RLIMIT_DATA since 4.7; elsewhere it is best effort."""
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    except (ImportError, AttributeError, ValueError, OSError):  # pragma: no cover - Windows, odd kernels
        pass


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent answers Ctrl-C
    if argv:
        _limit_memory(int(argv[0]))
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # stray prints go where stderr goes (nowhere, unless KVL_DEBUG)
    import PIL.Image  # noqa: F401 - ready before the first request (started early, see sandbox.prestart)
    try:
        serve(inp, out)
    except (BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
