"""Library pieces without Click: GGUF headers, image loading, renderers on a fake terminal."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from kvl_cli.engine.gguf_info import read_gguf_info
from kvl_cli.engine.types import (
    DoneEvent,
)
from kvl_cli.environment import Environment
from kvl_cli.errors import InputError, ModelError
from kvl_cli.media.images import InputRef, load_image
from kvl_cli.render import JsonRenderer, LiveRenderer, OutputOptions, PlainRenderer

from .terminal import EVENTS, RESULT, FakeTTY


def test_gguf_header_of_the_toy_pair(scripted):
    text, proj = read_gguf_info(scripted.model), read_gguf_info(scripted.mmproj)
    assert text.architecture == "deepseek2" and not text.is_projector
    assert text.text_embedding_length == 64
    assert text.array_lengths["tokenizer.ggml.tokens"] > 256
    assert proj.is_projector and proj.projector_type == "kimivl" and proj.projection_dim == 64


def test_gguf_truncated_header(scripted, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(scripted.model.read_bytes()[:200])
    with pytest.raises(ModelError, match="truncated"):
        read_gguf_info(cut)


def test_exif_orientation_is_honoured(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (80, 40), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    loaded = load_image(InputRef(str(path), path=path))
    assert (loaded.width, loaded.height) == (40, 80)


def test_alpha_is_flattened_onto_white(tmp_path):
    from PIL import Image

    path = tmp_path / "clear.png"
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(path)
    loaded = load_image(InputRef(str(path), path=path))
    assert loaded.rgb[:3] == b"\xff\xff\xff"


def test_large_images_are_sized_to_the_token_budget(tmp_path):
    from PIL import Image

    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (1, 2, 3)).save(path)
    loaded = load_image(InputRef(str(path), path=path), max_tokens=100)
    assert loaded.width * loaded.height <= 100 * 28 * 28 * 1.05
    assert abs(loaded.width / loaded.height - 4 / 3) < 0.05


def test_same_pixels_same_id(tmp_path):
    from PIL import Image

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (30, 30), (9, 9, 9)).save(a)
    Image.new("RGB", (30, 30), (9, 9, 9)).save(b)
    assert load_image(InputRef("a", path=a)).id == load_image(InputRef("b", path=b)).id


def test_unreadable_file(tmp_path):
    with pytest.raises(InputError, match="file is empty"):
        (tmp_path / "z.png").write_bytes(b"")
        load_image(InputRef("z.png", path=tmp_path / "z.png"))


# ---- renderers, fed events directly (the engine's own output is covered end to end) -----------------

def feed(renderer, label="a.jpg", total=1):
    renderer.begin(label, 1, total)
    for ev in EVENTS:
        renderer.event(ev)
    renderer.event(DoneEvent(RESULT))
    renderer.end(label, RESULT, {"task": "caption"})
    renderer.close()


def test_live_renderer_collapses_thinking_and_renders_markdown():
    out, err = FakeTTY(), io.StringIO()
    feed(LiveRenderer(OutputOptions(color=True), Environment(stdout=out, stderr=err)))
    screen = out.getvalue()
    assert "thought for" in screen and "3 tokens" in screen
    assert "It is" in screen and "**red**" not in screen  # Markdown rendered, not raw
    assert "\x1b[" in screen  # styled


def test_live_renderer_replayed_answer_says_how_long_the_model_thought():
    """A batch answer is replayed in one go when it finishes: the thinking time is the engine's."""
    from dataclasses import replace

    out = FakeTTY()
    r = LiveRenderer(OutputOptions(color=False), Environment(stdout=out, stderr=io.StringIO()))
    r.begin("a.jpg", 1, 2)
    for ev in EVENTS:
        r.event(ev)
    r.end("a.jpg", replace(RESULT, timings=replace(RESULT.timings, think_s=75.0)), {})
    r.close()
    assert "thought for 1 min 15 s · 3 tokens" in out.getvalue()


def test_live_renderer_respects_no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out = FakeTTY()
    feed(LiveRenderer(OutputOptions(), Environment(stdout=out, stderr=io.StringIO())))
    assert "\x1b[3" not in out.getvalue()  # no colour codes (cursor movement is fine)


def test_plain_renderer_streams_answer_only():
    out, err = io.StringIO(), io.StringIO()
    feed(PlainRenderer(OutputOptions(), Environment(stdout=out, stderr=err)))
    assert out.getvalue() == "It is **red**.\n"
    assert "hmm" not in err.getvalue()


def test_json_renderer_one_object():
    out = io.StringIO()
    feed(JsonRenderer(OutputOptions(json=True), Environment(stdout=out, stderr=io.StringIO())))
    (line,) = out.getvalue().splitlines()
    rec = json.loads(line)
    assert rec["answer"] == "It is **red**." and rec["thinking"] == "hmm red" and rec["task"] == "caption"


# ---- the command as a person runs it -------------------------------------------------------------------


def test_help_does_not_load_the_engine():
    code = ("import sys; from kvl_cli.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'llama_cpp' not in sys.modules and 'cv2' not in sys.modules, 'heavy import'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "caption" in r.stdout and "130 interrupted" in " ".join(r.stdout.split())


def test_doctor_json(kvl):
    r = kvl("doctor", "--json")
    rep = json.loads(r.out)
    assert rep["llama_cpp_python"] and rep["backend"] in ("CPU", "CUDA", "Metal", "Vulkan", "GPU")
    assert rep["physical_cores"] >= 1
    assert "amx" in rep and "AVX2" in rep["cpu_features"] or sys.platform == "darwin"
    assert "no model installed" in rep["model"]["error"]
