"""Inputs as a hostile user gives them: too big, endless, pipes read once, decoders that crash or
hang, option values libmtmd would refuse, and failures that must keep their place in a batch.
Each case asserts the exit code, the stderr line and stdout."""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kvl_cli.environment import Environment
from kvl_cli.errors import InputError
from kvl_cli.media import sandbox
from kvl_cli.media.images import InputRef, load_image, precheck_image
from kvl_cli.synthetic import SCRIPTED_ANSWER

from .clips import write_video
from .conftest import REPO, kvl_env, make_image

ANSWER = SCRIPTED_ANSWER + "\n"


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("kvl: error:")]


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


# ---- item 2: a size limit for everything read whole --------------------------------------------------


def test_a_file_over_the_limit_is_oversized_unread(kvl, scripted, tmp_path, monkeypatch):
    big = make_image(tmp_path / "big.png", size=(300, 300), color=(1, 2, 3))
    monkeypatch.setenv("KVL_MAX_INPUT_BYTES", "200")
    r = kvl("caption", big, *scripted.args())
    assert r.code == 3
    assert error_lines(r.err) == [f"kvl: error: {big}: oversized: more than 200 bytes, kvl's limit for one input "
                                  "(raise it if you trust the input, e.g. KVL_MAX_INPUT_BYTES=1G)"]
    assert r.out == ""
    monkeypatch.setenv("KVL_MAX_INPUT_BYTES", "1M")  # raised: the same file runs
    assert kvl("caption", big, *scripted.args()).out == ANSWER


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_endless_devices_stop_at_the_limit(kvl, scripted, monkeypatch, device):
    monkeypatch.setenv("KVL_MAX_INPUT_BYTES", "2M")
    r = kvl("caption", device, *scripted.args())
    assert r.code == 3
    assert error_lines(r.err) == [f"kvl: error: {device}: oversized: more than 2 MB, kvl's limit for one input "
                                  "(raise it if you trust the input, e.g. KVL_MAX_INPUT_BYTES=1G)"]
    assert r.out == ""


def test_dev_zero_at_the_default_limit_holds_no_more_than_the_limit(scripted):
    """A real process: `kvl caption /dev/zero` is refused within the default 256 MB, and its peak
    memory stays near that (it grew to 24 GB before the limit)."""
    code = ("import resource, subprocess, sys; r = subprocess.run([sys.executable, '-m', 'kvl_cli', 'caption', "
            "'/dev/zero'], capture_output=True, text=True); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=kvl_env(scripted),
                         timeout=120).stdout
    status, peak_kb = out.split("\n")[0].split()
    assert status == "3"
    assert "/dev/zero: oversized: more than 256 MB" in out
    assert int(peak_kb) * 1024 < 256e6 + 150e6  # the limit, plus Python and a chunk


def test_stdin_over_the_limit(kvl, scripted, monkeypatch):
    monkeypatch.setenv("KVL_MAX_INPUT_BYTES", "1K")
    r = kvl("caption", "-", *scripted.args(), stdin=b"\x89PNG" + b"\x00" * 5000)
    assert r.code == 3
    assert error_lines(r.err) == ["kvl: error: stdin: oversized: more than 1 kB, kvl's limit for one input "
                                  "(raise it if you trust the input, e.g. KVL_MAX_INPUT_BYTES=1G)"]
    assert r.out == ""


def test_a_bad_limit_is_a_usage_error(kvl, scripted, images, monkeypatch):
    monkeypatch.setenv("KVL_MAX_INPUT_BYTES", "lots")
    r = kvl("caption", images["jpg"], *scripted.args())
    assert r.code == 2
    assert error_lines(r.err) == ["kvl: error: KVL_MAX_INPUT_BYTES='lots' is not a size (set it like 512M or 2G "
                                  "(default 256 MB))"]
    assert r.out == ""


class _Body(BaseHTTPRequestHandler):
    body = b""
    chunked = False

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        try:
            self._send()
        except (BrokenPipeError, ConnectionResetError):
            pass  # kvl hung up once it had read past its limit: what it should do

    def _send(self) -> None:
        self.send_response(200)
        if self.chunked:  # no Content-Length: only the reading can stop it
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(0, len(self.body), 4096):
                self.wfile.write(self.body[i:i + 4096])
        else:
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)


@pytest.fixture
def served():
    servers = []

    def serve(body: bytes, chunked: bool) -> str:
        handler = type("H", (_Body,), {"body": body, "chunked": chunked})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/img.png"

    yield serve
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "no-length"])
def test_urls_have_the_same_limit(kvl, scripted, served, monkeypatch, chunked):
    url = served(b"\x89PNG" + b"\x00" * 20_000, chunked)
    monkeypatch.setenv("KVL_MAX_INPUT_BYTES", "10K")
    r = kvl("caption", url, *scripted.args())
    assert r.code == 3
    assert error_lines(r.err) == [f"kvl: error: {url}: oversized: more than 10 kB, kvl's limit for one input "
                                  "(raise it if you trust the input, e.g. KVL_MAX_INPUT_BYTES=1G)"]
    assert r.out == ""


def test_a_url_within_the_limit_is_captioned(kvl, scripted, served, images):
    r = kvl("caption", served(images["jpg"].read_bytes(), False), *scripted.args())
    assert (r.code, r.out, r.err) == (0, ANSWER, "")


class _Trickle(BaseHTTPRequestHandler):
    """A peer that sends a byte every 0.2 s, as long as it is read: each read finds something, so only
    a deadline on the whole download stops it."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(100_000):
                self.wfile.write(b"\x00")
                self.wfile.flush()
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass


def test_a_url_that_trickles_is_stopped_at_its_deadline(kvl, scripted, images, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/slow.png"
        monkeypatch.setenv("KVL_URL_DEADLINE_S", "2")
        started = time.monotonic()
        r = kvl("caption", url, images["jpg"], *scripted.args())
        assert time.monotonic() - started < 60
        assert r.code == 5  # the other input still finished
        assert r.out.count(ANSWER.strip()) == 1
        assert error_lines(r.err) == [f"kvl: error: {url}: the download took more than 2 s; stopped "
                                      "(download it first, or raise KVL_URL_DEADLINE_S)"]
    finally:
        server.shutdown()


# ---- item 3: every input read once -------------------------------------------------------------------


def _pipe_with(data: bytes) -> str:
    """A pipe's read end as a path (what `<(cat img.png)` gives); a thread writes ``data`` and closes."""
    r, w = os.pipe()

    def write() -> None:
        with os.fdopen(w, "wb") as f:
            f.write(data)

    threading.Thread(target=write, daemon=True).start()
    return f"/dev/fd/{r}"


def test_process_substitution_is_read_once(kvl, scripted, images):
    path = _pipe_with(images["png"].read_bytes())
    r = kvl("caption", path, "--json", *scripted.args())
    assert r.code == 0, r.err
    assert [(x["input"], x["answer"]) for x in records(r.out)] == [(path, SCRIPTED_ANSWER)]


def test_a_fifo_whose_writer_finished_does_not_hang(scripted, images, tmp_path):
    fifo = tmp_path / "img.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat {images['png']} > {fifo}"])
    r = subprocess.run([sys.executable, "-m", "kvl_cli", "caption", str(fifo)], capture_output=True, text=True,
                       env=kvl_env(scripted), timeout=60)
    writer.wait(timeout=10)
    assert (r.returncode, r.stdout, r.stderr) == (0, ANSWER, "")


def test_stdin_given_twice_is_read_once(kvl, scripted, images):
    r = kvl("caption", "-", "-", "--json", *scripted.args(), stdin=images["jpg"].read_bytes())
    assert r.code == 0, r.err
    assert [(x["input"], x["answer"]) for x in records(r.out)] == [("-", SCRIPTED_ANSWER), ("-", SCRIPTED_ANSWER)]


def test_regular_files_are_not_kept_but_streams_are_until_their_job(images):
    ref = InputRef("a.png", path=images["png"])
    precheck_image(ref)
    assert ref.data is None  # a batch of 10,000 files holds none of them
    pipe = InputRef("p", path=Path(_pipe_with(images["png"].read_bytes())))
    precheck_image(pipe)
    assert pipe.data == images["png"].read_bytes()  # kept: the pipe cannot be read again
    assert load_image(pipe).width == 96
    pipe.release()
    assert pipe.data is None


# ---- item 6: option values libmtmd would refuse, exit codes the README promises ---------------------------


@pytest.mark.parametrize("args,line", [
    (["--image-max-tokens", "1"], "--image-max-tokens 1 is below 8, the fewest tokens the vision projector can give "
                                  "an image (use --image-max-tokens 8 or more)"),
    (["--image-max-tokens", "7"], "--image-max-tokens 7 is below 8, the fewest tokens the vision projector can give "
                                  "an image (use --image-max-tokens 8 or more)"),
    (["--image-min-tokens", "2000", "--image-max-tokens", "10"],
     "--image-min-tokens 2000 is more than --image-max-tokens (10) (lower --image-min-tokens to 10 or less, or raise "
     "--image-max-tokens)"),
    (["--image-min-tokens", "2000"], "--image-min-tokens 2000 is more than caption's image token budget (1024) (lower "
                                     "--image-min-tokens to 1024 or less, or raise --image-max-tokens)"),
    (["--image-min-tokens", "9", "--image-max-tokens", "8"],
     "--image-min-tokens 9 is more than --image-max-tokens (8) (lower --image-min-tokens to 8 or less, or raise "
     "--image-max-tokens)"),
])
def test_image_token_options_libmtmd_refuses_exit_2_before_anything_loads(kvl, images, args, line):
    r = kvl("caption", images["jpg"], *args, "--model", "/nonexistent.gguf")  # no model is looked at
    assert r.code == 2
    assert error_lines(r.err) == [f"kvl: error: {line}"]
    assert r.out == ""


@pytest.mark.parametrize("args", [["--image-max-tokens", "8"], ["--image-min-tokens", "1", "--image-max-tokens", "8"],
                                  ["--image-min-tokens", "8", "--image-max-tokens", "8"]])
def test_the_smallest_token_limits_libmtmd_accepts(kvl, scripted, images, args):
    r = kvl("caption", images["jpg"], *args, *scripted.args())
    assert (r.code, r.out, r.err) == (0, ANSWER, "")


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mp4")


def test_video_prompt_too_long_is_exit_8(kvl, scripted, clip):
    r = kvl("video", clip, "--ctx", "512", *scripted.args())
    assert r.code == 8
    (line,) = error_lines(r.err)
    assert "but the context holds 512" in line
    assert r.out == ""


def test_video_end_before_start_is_a_usage_error(kvl, scripted, clip):
    r = kvl("video", clip, "--start", "8", "--end", "3", *scripted.args())
    assert r.code == 2
    assert error_lines(r.err) == ["kvl: error: --end 3 is not after --start 8 (give an --end later than --start)"]
    assert r.out == ""


def test_video_token_options_are_checked_too(kvl, clip):
    r = kvl("video", clip, "--image-max-tokens", "4")
    assert r.code == 2
    assert error_lines(r.err) == ["kvl: error: --image-max-tokens 4 is below 8, the fewest tokens the vision "
                                  "projector can give an image (use --image-max-tokens 8 or more)"]


def test_a_video_from_a_pipe_is_refused(kvl, scripted, clip):
    path = _pipe_with(clip.read_bytes())
    r = kvl("video", path, *scripted.args())
    assert r.code == 3
    assert error_lines(r.err) == [f"kvl: error: {path}: a video must be a regular file, not a stream "
                                  "(save the stream to a file first)"]
    assert r.out == ""


def test_kvl_model_that_is_not_gguf_says_so(kvl, images, monkeypatch):
    monkeypatch.setenv("KVL_MODEL", "/etc/passwd")
    r = kvl("caption", images["jpg"])
    assert r.code == 4
    assert error_lines(r.err) == ["kvl: error: /etc/passwd is not a GGUF file (give a .gguf model file (llama.cpp "
                                  "format))"]
    assert r.out == ""


# ---- item 7: failures keep their place -------------------------------------------------------------------


@pytest.fixture
def batch(images, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    return [str(images["jpg"]), "missing.png", str(images["png"]), str(empty), str(images["webp"])]


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_json_records_follow_the_input_order_failures_included(kvl, scripted, batch, parallel):
    r = kvl("caption", *batch, "--json", "-P", parallel, *scripted.args())
    assert r.code == 5
    recs = records(r.out)
    assert [x["input"] for x in recs] == batch
    assert [x.get("exit_code") for x in recs] == [None, 3, None, 3, None]
    assert [x["answer"] for x in recs if x["error"] is None] == [SCRIPTED_ANSWER] * 3
    assert [x.split(": ")[2] for x in error_lines(r.err)] == ["missing.png", batch[3]]


def test_text_output_and_errors_interleave_in_input_order(scripted, batch):
    from kvl_cli.cli import main

    both = io.StringIO()  # stdout and stderr in one stream: the order a terminal shows
    env = Environment(stdin=io.BytesIO(b""), stdout=both, stderr=both, stdin_isatty=True)
    with pytest.raises(SystemExit) as exc:
        main(["caption", "missing-first.png", *batch, *scripted.args()], env=env)
    assert exc.value.code == 5
    jpg, _, png, empty, webp = batch
    assert both.getvalue() == (
        "kvl: error: missing-first.png: file not found (check the path)\n"  # before the first good one: at once
        f"==> {jpg} <==\n{SCRIPTED_ANSWER}\n"  # no blank line before the first header
        "kvl: error: missing.png: file not found (check the path)\n"
        f"\n==> {png} <==\n{SCRIPTED_ANSWER}\n"
        f"kvl: error: {empty}: the file is empty (0 bytes) (check that it was written completely)\n"
        f"\n==> {webp} <==\n{SCRIPTED_ANSWER}\n")


def test_failures_keep_their_place_with_skip_done(kvl, scripted, batch, tmp_path):
    done = tmp_path / "done.jsonl"
    done.write_text(json.dumps({"input": batch[0], "error": None, "finish_reason": "stop"}) + "\n")
    r = kvl("caption", *batch, "--json", "--skip-done", done, *scripted.args())
    assert r.code == 5
    assert [x["input"] for x in records(r.out)] == batch[1:]
    assert "kvl: skipping 1 already done" in r.err


def test_only_failures_are_reported_in_order_and_nothing_loads(kvl, tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    r = kvl("caption", "a.png", tmp_path / "e.png", "b.png", "--json")  # no model configured: none needed
    assert r.code == 3
    assert [x["input"] for x in records(r.out)] == ["a.png", str(tmp_path / "e.png"), "b.png"]


# ---- decoders run in their own process ----------------------------------------------------------------------


@pytest.fixture
def faulty_decoder(monkeypatch):
    decoder = sandbox.Decoder(argv=[sys.executable, str(REPO / "tests" / "crashworker.py")])
    monkeypatch.setattr(sandbox, "_decoder", decoder)
    yield decoder
    decoder.close()


def test_a_decoder_crash_fails_that_input_and_the_batch_goes_on(kvl, scripted, images, tmp_path, faulty_decoder):
    crash = tmp_path / "crash.png"
    crash.write_bytes(images["png"].read_bytes() + b"KVL-CRASH")  # a valid PNG: the header check passes... once
    inputs = [str(images["jpg"]), str(crash), str(images["webp"])]
    r = kvl("caption", *inputs, "--json", *scripted.args())
    assert r.code == 5
    recs = records(r.out)
    assert [x["input"] for x in recs] == inputs
    assert recs[1]["exit_code"] == 3
    assert error_lines(r.err) == [f"kvl: error: {crash}: the image decoder crashed on this file (SIGSEGV) (the file "
                                  "is damaged or hostile; the other inputs are not affected)"]
    assert [x["answer"] for x in (recs[0], recs[2])] == [SCRIPTED_ANSWER] * 2
    assert faulty_decoder.starts == 2  # a fresh helper after the crash


def test_a_hanging_decoder_is_stopped(images, tmp_path, faulty_decoder, monkeypatch):
    monkeypatch.setattr(sandbox, "IMAGE_TIMEOUT_S", 1.0)
    hang = tmp_path / "hang.png"
    hang.write_bytes(images["png"].read_bytes() + b"KVL-HANG")
    with pytest.raises(InputError) as exc:
        load_image(InputRef("hang.png", path=hang))
    assert str(exc.value) == ("hang.png: decoding the image took more than 1 s; stopped (the file may be damaged or "
                              "hostile; convert it with another tool)")
    assert load_image(InputRef("ok.png", path=images["png"])).width == 96  # a fresh helper answers


def test_the_decoders_memory_is_capped(tmp_path):
    """A decompression bomb under the pixel limit but over the helper's memory cap: MemoryError in
    the helper, exit 3 for the input, kvl itself untouched."""
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("L", (12000, 12000)).save(bomb, optimize=True)  # 144 MP of zeros: a few hundred kB
    decoder = sandbox.Decoder()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with pytest.raises(InputError) as exc:
            decoder.request("bomb.png", "image.decode", {"label": "bomb.png", "pixels": 200_000_000,
                                                         "bytes": 10**8, **sandbox.where(bomb)},
                            cap=300 * 2**20, timeout=60, max_payload=3 * 200_000_000)
    finally:
        decoder.close()
    assert str(exc.value).startswith("bomb.png: the image is damaged (MemoryError") or "crashed" in str(exc.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # kB: kvl did not decode it


def test_decoding_in_process_gives_the_same_pixels(images, monkeypatch):
    here = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("KVL_SANDBOX", mode)
        here[mode] = load_image(InputRef("a", path=images["png"]), max_tokens=16)
    assert here["1"] == here["0"]


def test_a_native_decoders_own_messages_stay_off_stderr(kvl, scripted, tmp_path):
    """libtiff prints "ZIPDecode: Decoding error …" from C; it goes to the decoder process's
    stderr, not kvl's: the user sees kvl's one line."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(40 * 56 * 3, dtype=np.uint8).reshape(40, 56, 3)).save(
        buf, "TIFF", compression="tiff_adobe_deflate")
    data = bytearray(buf.getvalue())
    data[8:12] = b"\xff\xff\xff\xff"  # the first strip's zlib header
    broken = tmp_path / "broken.tif"
    broken.write_bytes(bytes(data))
    r = kvl("caption", broken, *scripted.args())
    assert r.code == 3
    assert r.err.splitlines() == [f"kvl: error: {broken}: the image is damaged (OSError: decoder error -2) "
                                  "(re-export or re-download it)"]
    assert r.out == ""
