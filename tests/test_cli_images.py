"""caption / ocr / ask end to end: the real kvl, the real engine, toy Kimi-VL models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvl_cli.synthetic import SCRIPTED_ANSWER, SCRIPTED_THINKING

from .conftest import make_image

NATIVE_LOG_MARKERS = ("llama_", "clip_", "load_tensors", "mtmd_", "ggml_", "print_info")


def assert_no_native_logs(err: str) -> None:
    for marker in NATIVE_LOG_MARKERS:
        assert marker not in err, f"native log leaked to stderr: {err[:300]}"


def jsonl(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# ---- the happy paths -------------------------------------------------------------------------------


def test_caption_in_a_pipe_prints_the_answer_alone(kvl, scripted, images):
    r = kvl("caption", images["jpg"], *scripted.args())
    assert r.code == 0
    assert r.out == SCRIPTED_ANSWER + "\n"
    assert_no_native_logs(r.err)
    assert r.err == ""


def test_caption_json_has_every_field(kvl, scripted, images):
    r = kvl("caption", images["jpg"], "--json", "--detail", "short", *scripted.args())
    assert r.code == 0
    (rec,) = jsonl(r.out)
    assert rec["input"] == str(images["jpg"])
    assert rec["task"] == "caption" and rec["detail"] == "short"
    assert rec["answer"] == SCRIPTED_ANSWER
    assert rec["thinking"] == SCRIPTED_THINKING
    assert rec["finish_reason"] == "stop"
    assert rec["model"] == scripted.model.name
    assert rec["error"] is None
    assert set(rec["tokens"]) == {"prompt", "image", "thinking", "answer", "generated"}
    assert rec["tokens"]["generated"] == rec["tokens"]["thinking"] + rec["tokens"]["answer"] == 8
    assert rec["tokens"]["image"] == sum(rec["image_tokens"]) > 0
    assert set(rec["timings"]) == {"encode_s", "prefill_s", "generate_s", "cache_s", "think_s"}
    assert 0 <= rec["timings"]["think_s"] <= rec["timings"]["generate_s"]
    assert rec["cached"] == {"images": 0, "prefix_tokens": 0}
    assert rec["image_max_tokens"] == 1024
    assert "load_s" in rec


def test_show_thinking_in_a_pipe_goes_to_stderr(kvl, scripted, images):
    r = kvl("caption", images["jpg"], "--show-thinking", *scripted.args())
    assert r.code == 0
    assert r.out == SCRIPTED_ANSWER + "\n"
    assert SCRIPTED_THINKING in r.err


def test_no_think_skips_the_thinking(kvl, scripted, images):
    r = kvl("ask", images["jpg"], "What is it?", "--no-think", "--json", *scripted.args())
    (rec,) = jsonl(r.out)
    assert rec["answer"] == SCRIPTED_ANSWER
    assert rec["thinking"] == ""
    assert rec["tokens"]["thinking"] == 0


def test_think_budget_closes_the_thinking_and_the_answer_follows(kvl, scripted, images):
    r = kvl("ocr", images["jpg"], "--think-budget", "1", "--json", *scripted.args())
    (rec,) = jsonl(r.out)
    assert rec["thinking"] == "some"
    assert rec["answer"] == SCRIPTED_ANSWER
    assert rec["think_budget_hit"] is True
    assert rec["image_max_tokens"] == 2048  # ocr's default


def test_max_tokens_stops_with_length_and_says_why(kvl, scripted, images):
    r = kvl("caption", images["jpg"], "--max-tokens", "2", "--json", *scripted.args())
    (rec,) = jsonl(r.out)
    assert rec["finish_reason"] == "length"
    assert rec["answer"] == ""
    assert "still thinking when it reached --max-tokens" in r.err


def test_random_model_runs_to_the_token_limit(kvl, random_pair, images):
    r = kvl("caption", images["jpg"], "--max-tokens", "5", "--no-think", "--seed", "1", "--json", *random_pair.args())
    assert r.code == 0
    (rec,) = jsonl(r.out)
    assert rec["tokens"]["generated"] == 5
    assert rec["finish_reason"] in ("length", "stop")


def test_batch_of_files_dirs_and_globs_in_order(kvl, scripted, images, tmp_path):
    d = tmp_path / "more"
    d.mkdir()
    make_image(d / "b.png")
    make_image(d / "a.jpg")
    r = kvl("caption", images["jpg"], d, str(tmp_path / "img" / "*.webp"), "--json", *scripted.args())
    assert r.code == 0
    recs = jsonl(r.out)
    assert [Path(x["input"]).name for x in recs] == ["red.jpg", "a.jpg", "b.png", "green.webp"]
    assert all(x["answer"] == SCRIPTED_ANSWER for x in recs)
    assert len({x["load_s"] for x in recs}) == 1  # one model load for the batch


def test_batch_in_a_pipe_heads_each_answer(kvl, scripted, images):
    r = kvl("caption", images["jpg"], images["png"], *scripted.args())
    assert r.out == f"==> {images['jpg']} <==\n{SCRIPTED_ANSWER}\n\n==> {images['png']} <==\n{SCRIPTED_ANSWER}\n"


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "bmp", "tiff"])
def test_every_format_goes_through_the_engine(kvl, scripted, images, fmt):
    r = kvl("caption", images[fmt], "--json", *scripted.args())
    assert r.code == 0, r.err
    assert jsonl(r.out)[0]["answer"] == SCRIPTED_ANSWER


def test_animated_gif_uses_its_first_frame(kvl, scripted, tmp_path):
    from PIL import Image

    frames = [Image.new("RGB", (56, 56), c) for c in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    r = kvl("caption", path, "--json", *scripted.args())
    assert jsonl(r.out)[0]["answer"] == SCRIPTED_ANSWER


def test_image_from_stdin(kvl, scripted, images):
    r = kvl("caption", "-", "--json", *scripted.args(), stdin=images["jpg"].read_bytes())
    (rec,) = jsonl(r.out)
    assert rec["input"] == "-" and rec["answer"] == SCRIPTED_ANSWER


def test_ask_puts_all_images_in_one_prompt(kvl, scripted, images):
    r = kvl("ask", images["jpg"], images["png"], "What changed?", "--json", *scripted.args())
    assert r.code == 0
    (rec,) = jsonl(r.out)
    assert rec["question"] == "What changed?"
    assert rec["images"] == [str(images["jpg"]), str(images["png"])]
    assert len(rec["image_tokens"]) == 2


def test_ask_reads_the_question_from_stdin(kvl, scripted, images):
    r = kvl("ask", images["jpg"], "--json", *scripted.args(), stdin=b"What is this?\n")
    (rec,) = jsonl(r.out)
    assert rec["question"] == "What is this?"


def test_ask_without_a_question_is_a_usage_error(kvl, scripted, images):
    r = kvl("ask", images["jpg"], *scripted.args(), stdin=b"")
    assert r.code == 2
    assert "no question given" in r.err


def test_image_token_limits_reach_the_encoder(kvl, scripted, tmp_path):
    big = make_image(tmp_path / "big.png", size=(1400, 1000))
    small = jsonl(kvl("caption", big, "--image-max-tokens", "64", "--json", *scripted.args()).out)[0]
    large = jsonl(kvl("caption", big, "--image-max-tokens", "400", "--json", *scripted.args()).out)[0]
    assert small["image_tokens"][0] <= 64
    assert 64 < large["image_tokens"][0] <= 400


def test_verbose_reports_image_tokens_and_timings(kvl, scripted, images):
    r = kvl("caption", images["jpg"], "-v", *scripted.args())
    assert r.out == SCRIPTED_ANSWER + "\n"
    assert "image tokens" in r.err and "tok/s" in r.err
    assert_no_native_logs(r.err)


# ---- bad input: one line, a documented exit code, no traceback ------------------------------------


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("kvl: error:")]
    assert "Traceback" not in err
    assert lines, err
    return lines[0]


def test_missing_file_fails_before_any_model_is_needed(kvl, images):
    r = kvl("caption", "nope.jpg")  # no model configured either: the input is checked first
    assert r.code == 3
    assert one_error_line(r.err) == "kvl: error: nope.jpg: file not found (check the path)"


@pytest.mark.parametrize("case,expect", [
    ("empty", "the file is empty"),
    ("text", "not an image kvl can read"),
    ("truncated", "damaged"),
    ("emptydir", "no images in this directory"),
    ("glob", "no images match this pattern"),
    ("heic", "HEIC/AVIF images need an optional extra"),
])
def test_bad_inputs(kvl, scripted, images, tmp_path, case, expect):
    target: str
    if case == "empty":
        (tmp_path / "e.png").write_bytes(b"")
        target = str(tmp_path / "e.png")
    elif case == "text":
        (tmp_path / "t.jpg").write_text("not a picture")
        target = str(tmp_path / "t.jpg")
    elif case == "truncated":
        data = images["jpg"].read_bytes()
        big = make_image(tmp_path / "big.jpg", size=(800, 600), quality=95)
        data = big.read_bytes()
        (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
        target = str(tmp_path / "cut.jpg")
    elif case == "emptydir":
        (tmp_path / "nothing").mkdir()
        target = str(tmp_path / "nothing")
    elif case == "glob":
        target = str(tmp_path / "*.png")
    else:
        (tmp_path / "x.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
        target = str(tmp_path / "x.heic")
    r = kvl("caption", target, *scripted.args())
    assert r.code == 3, r.err
    assert expect in one_error_line(r.err)
    assert r.out == ""


def test_decompression_bomb_limit(kvl, scripted, images, monkeypatch):
    monkeypatch.setenv("KVL_MAX_IMAGE_PIXELS", "1000")
    r = kvl("caption", images["jpg"], *scripted.args())
    assert r.code == 3
    assert "megapixels, over the 0.0 MP safety limit" in one_error_line(r.err)


def test_a_bad_file_in_a_batch_is_reported_and_the_rest_finish(kvl, scripted, images, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"")
    r = kvl("caption", images["jpg"], tmp_path / "bad.png", "missing.png", images["png"], "--json", *scripted.args())
    assert r.code == 5
    recs = jsonl(r.out)
    ok = [x for x in recs if x["error"] is None]
    bad = [x for x in recs if x["error"]]
    assert [x["input"] for x in ok] == [str(images["jpg"]), str(images["png"])]
    assert {x["input"] for x in bad} == {str(tmp_path / "bad.png"), "missing.png"}
    assert all(x["exit_code"] == 3 for x in bad)
    assert r.err.count("kvl: error:") == 2


def test_prompt_too_long_for_the_context(kvl, scripted, tmp_path):
    big = make_image(tmp_path / "big.png", size=(1400, 1000))
    r = kvl("caption", big, "--ctx", "512", "--image-min-tokens", "600", "--image-max-tokens", "800",
            *scripted.args())
    assert r.code == 8
    assert "but the context holds 512" in one_error_line(r.err)


@pytest.mark.parametrize("option,value", [
    ("--temperature", "-1"), ("--top-p", "2"), ("--ctx", "10"), ("--threads", "0"), ("--max-tokens", "0"),
    ("--detail", "huge"),
])
def test_bad_option_values_exit_2(kvl, scripted, images, option, value):
    r = kvl("caption", images["jpg"], option, value, *scripted.args())
    assert r.code == 2
    assert "Invalid value" in r.err
    assert r.out == ""


# ---- model problems --------------------------------------------------------------------------------------


def test_no_model_says_how_to_get_one(kvl, images):
    r = kvl("caption", images["jpg"])
    assert r.code == 4
    assert "no model installed" in r.err and "kvl pull" in r.err


def test_model_file_missing(kvl, scripted, images):
    r = kvl("caption", images["jpg"], "--model", "missing.gguf", "--mmproj", scripted.mmproj)
    assert r.code == 4
    assert one_error_line(r.err) == (
        "kvl: error: model file not found: missing.gguf (check the path, or pull a model with `kvl pull`)")


def test_not_a_gguf(kvl, scripted, images, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    r = kvl("caption", images["jpg"], "--model", fake, "--mmproj", scripted.mmproj)
    assert r.code == 4
    assert "is not a GGUF file" in one_error_line(r.err)


def test_model_without_projector(kvl, scripted, images, tmp_path):
    lone = tmp_path / "lone" / "model.gguf"
    lone.parent.mkdir()
    lone.write_bytes(scripted.model.read_bytes())
    r = kvl("caption", images["jpg"], "--model", lone)
    assert r.code == 4
    assert "no vision projector" in r.err and "--mmproj" in r.err


def test_projector_found_beside_the_model(kvl, scripted, images):
    r = kvl("caption", images["jpg"], "--model", scripted.model)  # its folder holds one mmproj*.gguf
    assert r.code == 0 and r.out == SCRIPTED_ANSWER + "\n"


def test_projector_and_model_swapped(kvl, scripted, images):
    r = kvl("caption", images["jpg"], "--model", scripted.mmproj, "--mmproj", scripted.model)
    assert r.code == 4
    assert "is a vision projector, not a text model" in r.err


def test_text_model_given_as_projector(kvl, scripted, images):
    r = kvl("caption", images["jpg"], "--model", scripted.model, "--mmproj", scripted.model)
    assert r.code == 4
    assert "is not a vision projector" in r.err


def test_projector_that_does_not_fit(kvl, scripted, narrow_projector, images):
    r = kvl("caption", images["jpg"], "--model", scripted.model, "--mmproj", narrow_projector)
    assert r.code == 4
    assert "does not fit the model" in one_error_line(r.err)


def test_debug_shows_the_traceback(kvl, images):
    r = kvl("caption", images["jpg"], "--debug")
    assert r.code == 4
    assert "Traceback" in r.err


def test_models_from_environment(kvl, scripted, images, monkeypatch):
    monkeypatch.setenv("KVL_MODEL", str(scripted.model))
    monkeypatch.setenv("KVL_MMPROJ", str(scripted.mmproj))
    r = kvl("ocr", images["jpg"], "--format", "markdown", "--json")
    rec = jsonl(r.out)[0]
    assert rec["format"] == "markdown" and rec["answer"] == SCRIPTED_ANSWER
