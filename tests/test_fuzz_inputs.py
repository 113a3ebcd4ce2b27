"""Fuzzing everything kvl parses from untrusted bytes (GGUF headers have their own file): images in
every format kvl reads, videos, disk cache entries, ``--from`` lists and ``--skip-done`` files.

Inputs are real files written here (each image format in several flavours, short clips in several
containers) with bytes flipped, overwritten with boundary values, cut, duplicated or spliced, and
bare format signatures followed by random bytes. Every case must end in its documented outcome
(decoded, or InputError: exit 3 with one line naming the input; a cache miss; a list or an
InputError/UsageError), within a time limit and with bounded memory, and a native decoder that
crashes must cost that input only (the decoder process, see ``kvl_cli.media.sandbox``).

CI runs a short campaign; ``KVL_FUZZ_EXAMPLES=N`` sets the examples per target for a long one, and
``KVL_FUZZ_REPORT=FILE`` appends each target's counts (outcomes, crashes, slowest case) to FILE.
"""

from __future__ import annotations

import io
import json
import os
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kvl_cli.cache import _MAGIC, DiskCache, write_entry  # noqa: E402
from kvl_cli.environment import Environment  # noqa: E402
from kvl_cli.errors import ExitCode, InputError, KvlError, UsageError  # noqa: E402
from kvl_cli.media import sandbox, video_sandbox  # noqa: E402
from kvl_cli.media.images import InputRef, expand_inputs, load_image, precheck_image  # noqa: E402

EXAMPLES = int(os.environ.get("KVL_FUZZ_EXAMPLES", "0"))
FUZZ = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
IMAGE_SECONDS = 10.0  # one image's header check and decode (the decoder's own limit is 60 s)
VIDEO_SECONDS = 20.0
PARENT_MEMORY = 64 * 2**20  # Python allocations in kvl's own process for one case


def examples(ci: int, most: int | None = None) -> settings:
    """``ci`` examples, or KVL_FUZZ_EXAMPLES (at most ``most``, for slow targets)."""
    long = min(EXAMPLES, most) if most else EXAMPLES
    return settings(max_examples=long or ci, **FUZZ)  # type: ignore[arg-type]


class Tally:
    """What a target's cases came to: outcomes, decoder crashes, timeouts, the slowest case."""

    def __init__(self, target: str) -> None:
        self.target, self.counts, self.slowest = target, Counter[str](), 0.0

    def add(self, outcome: str, seconds: float) -> None:
        self.counts[outcome] += 1
        self.slowest = max(self.slowest, seconds)

    def report(self) -> None:
        path = os.environ.get("KVL_FUZZ_REPORT")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"target": self.target, "cases": sum(self.counts.values()),
                                    "slowest_s": round(self.slowest, 3), **self.counts}) + "\n")


@pytest.fixture(scope="module")
def tallies():
    made: dict[str, Tally] = {}
    yield lambda target: made.setdefault(target, Tally(target))
    for tally in made.values():
        tally.report()


def classify(exc: KvlError) -> str:
    text = str(exc)
    if "decoder crashed" in text:
        return "crash"
    if "took more than" in text:
        return "timeout"
    if "is damaged (" in text:
        return "damaged:" + text.split("is damaged (", 1)[1].split(":", 1)[0]
    return "refused"


def one_line(exc: KvlError, label: str) -> None:
    assert exc.exit_code is ExitCode.INPUT, exc
    assert "\n" not in str(exc) and str(exc).startswith(label), str(exc)


# ---- mutations -------------------------------------------------------------------------------------

INTS = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> tuple[str, bytes]:
    """A seed file with a few edits, most of them near the start, where headers and sizes are."""
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        pos = draw(st.one_of(st.integers(0, max(0, min(n, 96) - 1)), st.integers(0, max(0, n - 1))))
        kind = draw(st.sampled_from(["flip", "byte", "int", "cut", "insert", "delete", "repeat", "splice"]))
        if kind == "flip" and n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and n:
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFE, 0xFF]))
        elif kind == "int":
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from(INTS)) % (1 << (8 * width))
            data[pos:pos + width] = value.to_bytes(width, draw(st.sampled_from(["little", "big"])))
        elif kind == "cut":
            del data[draw(st.integers(0, n)):]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif kind == "repeat":
            chunk = data[pos:pos + draw(st.integers(1, 256))]
            data[pos:pos] = chunk * draw(st.integers(1, 8))
        else:
            other = seeds[draw(st.sampled_from(sorted(seeds)))]
            data[pos:] = other[draw(st.integers(0, len(other))):]
    return name, bytes(data)


def signatures(magics: list[bytes]) -> st.SearchStrategy[tuple[str, bytes]]:
    return st.tuples(st.just("signature"), st.builds(lambda m, rest: m + rest, st.sampled_from(magics),
                                                     st.binary(max_size=2048)))


# ---- images ----------------------------------------------------------------------------------------------


def _image_seeds() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = Image.fromarray((rng.random((40, 56, 3)) * 255).astype("uint8"))
    rgba = rgb.convert("RGBA")
    frames = [rgb, rgb.rotate(90), rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: exercises the orientation code
    out: dict[str, bytes] = {}

    def save(name: str, img: Image.Image, fmt: str, **kw: object) -> None:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out[name] = buf.getvalue()

    save("jpeg", rgb, "JPEG", quality=80)
    save("jpeg-progressive-exif", rgb, "JPEG", progressive=True, exif=exif.tobytes())
    save("jpeg-cmyk", rgb.convert("CMYK"), "JPEG")
    save("png", rgb, "PNG")
    save("png-rgba-interlaced", rgba, "PNG", interlace=True)
    save("png-palette-transparent", rgb.convert("P"), "PNG", transparency=0)
    save("png-16bit", rgb.convert("I;16"), "PNG")
    save("webp-lossy", rgb, "WEBP", quality=60)
    save("webp-lossless-alpha", rgba, "WEBP", lossless=True)
    save("webp-animated", frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)
    save("gif-animated", frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    save("bmp", rgb, "BMP")
    save("bmp-palette", rgb.convert("P"), "BMP")
    save("tiff-lzw", rgb, "TIFF", compression="tiff_lzw")
    save("tiff-jpeg", rgb, "TIFF", compression="jpeg")
    save("tiff-deflate-multipage", frames[0], "TIFF", compression="tiff_adobe_deflate", save_all=True,
         append_images=frames[1:])
    save("tiff-raw-gray", rgb.convert("L"), "TIFF")
    from PIL import features

    if features.check("avif"):
        save("avif", rgb, "AVIF", quality=50)
    return out


IMAGE_SEEDS = _image_seeds()
IMAGE_MAGICS = [b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x10\x00\x00WEBPVP8 ",
                b"RIFF\x00\x10\x00\x00WEBPVP8L", b"GIF89a", b"GIF87a", b"BM", b"II*\x00", b"MM\x00*",
                b"\x00\x00\x00\x1cftypavif", b"\x00\x00\x00\x18ftypheic", b"P6\n", b"\x00\x00\x01\x00"]


def check_image(tally: Tally, name: str, data: bytes, tmp: Path, *, as_file: bool) -> None:
    """Header check, then decode, as kvl runs them (in the decoder process); from a file or stdin."""
    path = tmp / f"fuzz-{name}"
    path.write_bytes(data)
    ref = InputRef(path.name, path=path) if as_file else InputRef("-", data=data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        precheck_image(ref)
        image = load_image(ref, max_tokens=256)
        assert len(image.rgb) == image.width * image.height * 3
        outcome = "decoded"
    except InputError as exc:
        one_line(exc, ref.label)
        outcome = classify(exc)
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    tally.add(outcome, elapsed)
    assert elapsed < IMAGE_SECONDS, f"{elapsed:.1f} s for {name}"
    assert peak < PARENT_MEMORY, f"{peak / 2**20:.0f} MiB in kvl's process for {name}"


def test_every_seed_image_decodes(tmp_path):
    for name, data in IMAGE_SEEDS.items():
        (tmp_path / name).write_bytes(data)
        assert load_image(InputRef(name, path=tmp_path / name), max_tokens=64).width > 0, name


@given(case=st.one_of(mutated(IMAGE_SEEDS), mutated(IMAGE_SEEDS), signatures(IMAGE_MAGICS)), as_file=st.booleans())
@examples(100)
def test_fuzz_images(case, as_file, tmp_path_factory, tallies):
    name, data = case
    check_image(tallies("images"), name, data, tmp_path_factory.mktemp("img"), as_file=as_file)


def test_decoder_memory_stays_under_its_cap():
    """After the image campaign: the helper's peak memory (VmHWM) is under the cap it runs with."""
    proc = sandbox.decoder().proc
    if proc is None or not Path(f"/proc/{proc.pid}/status").exists():
        pytest.skip("no decoder process running (or no /proc)")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines())
    peak_kb = int(status["VmHWM"].split()[0])
    from kvl_cli.limits import max_input_bytes
    from kvl_cli.media.decode import pixel_limit

    assert peak_kb * 1024 < sandbox.memory_cap(pixel_limit(), max_input_bytes())


# ---- videos ------------------------------------------------------------------------------------------------


def _video_seeds(folder: Path) -> dict[str, bytes]:
    import cv2
    import numpy as np

    out: dict[str, bytes] = {}
    for name, fourcc in (("mp4v.mp4", "mp4v"), ("mjpg.avi", "MJPG"), ("xvid.avi", "XVID")):
        path = folder / name
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (64, 48))
        for i in range(20):
            writer.write(np.full((48, 64, 3), (i * 12 % 255, 90, 200 - i * 5), np.uint8))
        writer.release()
        if path.exists() and path.stat().st_size:
            out[name] = path.read_bytes()
    from PIL import Image

    frames = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(5)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out["anim.gif"] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def video_seeds(tmp_path_factory):
    return _video_seeds(tmp_path_factory.mktemp("seeds"))


VIDEO_MAGICS = [b"\x00\x00\x00\x18ftypisom", b"\x00\x00\x00\x20ftypmp42", b"RIFF\x00\x10\x00\x00AVI LIST",
                b"\x1aE\xdf\xa3", b"GIF89a", b"FLV\x01"]


def check_video(tally: Tally, name: str, data: bytes, tmp: Path) -> None:
    """Probe, then sample a few frames (in the decoder process), as ``kvl video`` does."""
    path = tmp / f"fuzz{Path(name).suffix or '.mp4'}"
    path.write_bytes(data)
    start = time.perf_counter()
    try:
        info = video_sandbox.probe(path)
        sampled = video_sandbox.sample(path, info, max_frames=4)
        assert sampled.frames and all(f.rgb.ndim == 3 for f in sampled.frames)
        outcome = "decoded" if not sampled.warning else "decoded-partly"
    except InputError as exc:
        one_line(exc, str(path))
        outcome = classify(exc)
    elapsed = time.perf_counter() - start
    tally.add(outcome, elapsed)
    assert elapsed < VIDEO_SECONDS, f"{elapsed:.1f} s for {name}"


def test_fuzz_videos(video_seeds, tmp_path_factory, tallies, monkeypatch):
    monkeypatch.setattr(sandbox, "VIDEO_TIMEOUT_S", VIDEO_SECONDS * 2)  # a hang fails the case, not the run

    @given(case=st.one_of(mutated(video_seeds), signatures(VIDEO_MAGICS)))
    @examples(25)
    def run(case: tuple[str, bytes]) -> None:
        check_video(tallies("videos"), *case, tmp_path_factory.mktemp("vid"))

    run()


# ---- cache entries -----------------------------------------------------------------------------------------


@st.composite
def cache_files(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    """(kind, file bytes, whether they are exactly a valid entry for the key)."""
    kind = draw(st.sampled_from(["embeddings", "prompts"]))
    key = "ab" + "0" * 62
    meta, payload = draw(st.binary(max_size=64)), draw(st.binary(max_size=512))
    import struct
    import zlib

    from kvl_cli.cache import _HEADER, checksum

    valid = _HEADER.pack(_MAGIC[kind], len(meta), len(payload), checksum(key, meta, payload)) + meta + payload
    how = draw(st.sampled_from(["valid", "mutated", "header", "random"]))
    if how == "valid":
        return kind, valid, True
    if how == "mutated":
        return kind, draw(mutated({"entry": valid}))[1], False
    if how == "header":
        lie = struct.pack("<8sIQI", draw(st.sampled_from([_MAGIC[kind], b"KVLEMB1\n", b"\x00" * 8])),
                          draw(st.sampled_from(INTS)), draw(st.sampled_from(INTS + [2**40, 2**64 - 1])),
                          draw(st.sampled_from([0, zlib.crc32(b"")])))
        return kind, lie + draw(st.binary(max_size=256)), False
    return kind, draw(st.binary(max_size=1024)), False


@given(case=cache_files())
@examples(100)
def test_fuzz_cache_entries(case, tmp_path_factory, tallies):
    kind, data, valid = case
    cache = DiskCache(root=tmp_path_factory.mktemp("cache"), cap=10**9)
    key = "ab" + "0" * 62
    path = cache._path(kind, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        got = cache.get(kind, key)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    if valid:
        assert got is not None
    if got is None:
        assert not path.exists() or cache.damaged[kind] == 0  # a damaged entry is deleted
    else:  # served: exactly what a writer wrote for this key
        again = tmp_path_factory.mktemp("again") / "e.bin"
        write_entry(again, _MAGIC[kind], key, *got)
        assert again.read_bytes() == data
    tallies("cache entries").add("hit" if got else "miss", elapsed)
    assert elapsed < 1.0 and peak < 2 * len(data) + 2**20


# ---- --from lists and --skip-done files ---------------------------------------------------------------------


@st.composite
def list_files(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.one_of(
        st.text(max_size=40), st.sampled_from(["#", "# comment", "-", "", " ", "*.png", "~nouser/x.png", "a\x00b",
                                               "x" * 5000, "http://127.0.0.1:9/x.png", "[", "**/*", "\udcff"])),
        max_size=12))
    sep = draw(st.sampled_from(["\n", "\r\n", "\r", "\x0b", "\u2028"]))
    text = sep.join(parts)
    return text.encode("utf-8", "surrogatepass") if draw(st.booleans()) else draw(st.binary(max_size=256))


@given(data=list_files())
@examples(100)
def test_fuzz_from_lists(data, tmp_path_factory, tallies):
    from kvl_cli.run.batch import read_list

    folder = tmp_path_factory.mktemp("list")
    (folder / "list.txt").write_bytes(data)
    start = time.perf_counter()
    try:
        names = read_list(str(folder / "list.txt"), Environment(stdin=io.BytesIO(b"")))
        refs, problems = expand_inputs(names)
        assert all(p.error.exit_code is ExitCode.INPUT and "\n" not in str(p.error) for p in problems)
        outcome = "read"
    except (InputError, UsageError) as exc:
        assert "\n" not in str(exc)
        outcome = "refused"
    tallies("--from lists").add(outcome, time.perf_counter() - start)


def test_from_an_endless_list_is_refused_within_the_limit(monkeypatch):
    from kvl_cli.run.batch import read_list

    monkeypatch.setenv("KVL_MAX_INPUT_BYTES", "2M")
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"^--from /dev/zero: oversized: more than 2 MB"):
            read_list("/dev/zero", Environment(stdin=io.BytesIO(b"")))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1000**2


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3))


@st.composite
def results_files(draw: st.DrawFn) -> bytes:
    good = {"input": draw(st.text(max_size=20)), "error": None, "finish_reason": "stop"}
    line = st.one_of(st.just(json.dumps(good)), st.builds(json.dumps, JSON_VALUES), st.text(max_size=60))
    text = "\n".join(draw(st.lists(line, max_size=10))).encode("utf-8", "surrogatepass")
    return draw(mutated({"results": text}))[1] if draw(st.booleans()) and text else text


@given(data=results_files())
@examples(100)
def test_fuzz_skip_done_files(data, tmp_path_factory, tallies):
    from kvl_cli.run.batch import done_inputs

    path = tmp_path_factory.mktemp("done") / "out.jsonl"
    path.write_bytes(data)
    start = time.perf_counter()
    done = done_inputs(str(path))
    assert all(isinstance(x, str) for x in done)
    tallies("--skip-done files").add("read", time.perf_counter() - start)


def test_skip_done_file_with_deeply_nested_json(tmp_path):
    from kvl_cli.run.batch import done_inputs

    path = tmp_path / "out.jsonl"
    rec = {"input": "a.png", "error": None, "finish_reason": "stop"}
    nested = {"input": "b.png", "error": None, "finish_reason": "stop", "x": json.loads("[" * 50 + "]" * 50)}
    path.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n" + json.dumps(rec) + "\n" + json.dumps(nested))
    assert done_inputs(str(path)) == {"a.png", "b.png"}


def test_skip_done_file_with_a_line_longer_than_any_record(tmp_path, monkeypatch):
    from kvl_cli.run import batch

    monkeypatch.setattr(batch, "MAX_RECORD_CHARS", 64)
    path = tmp_path / "out.jsonl"
    recs = [{"input": f"{c}.png", "error": None, "finish_reason": "stop"} for c in "ab"]
    path.write_text(json.dumps(recs[0]) + "\n" + '{"input": "long.png", "answer": "' + "x" * 500 + '"}\n'
                    + json.dumps(recs[1]) + "\n" + '{"input": "cut.png", "answer": "' + "y" * 300)
    assert batch.done_inputs(str(path)) == {"a.png", "b.png"}


# ---- through the command line ------------------------------------------------------------------------------


@given(case=mutated(IMAGE_SEEDS))
@examples(4, most=100)
def test_fuzz_caption_end_to_end(case, kvl, scripted, tmp_path_factory):
    """The whole command on a damaged image beside a good one: 0 or 5, one line per failure, the
    good answer always there."""
    from kvl_cli.synthetic import SCRIPTED_ANSWER

    folder = tmp_path_factory.mktemp("e2e")
    bad, good = folder / f"bad-{case[0]}", folder / "good.png"
    bad.write_bytes(case[1])
    good.write_bytes(IMAGE_SEEDS["png"])
    r = kvl("caption", bad, good, "--json", "--image-max-tokens", "16", "--max-tokens", "8", *scripted.args())
    recs = [json.loads(line) for line in r.out.splitlines()]
    assert [x["input"] for x in recs] == [str(bad), str(good)], (r.code, r.err)
    assert recs[1]["answer"] == SCRIPTED_ANSWER
    errors = [line for line in r.err.splitlines() if line.startswith("kvl: error:")]
    assert r.code == (5 if recs[0]["error"] else 0), r.err
    assert len(errors) == (1 if recs[0]["error"] else 0) and "Traceback" not in r.err
