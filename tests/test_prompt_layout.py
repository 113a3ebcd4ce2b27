"""#11 part 1: the prompt follows Kimi-VL's trained layout token for token, checked through --dry-run
against a rendering of the reference layout written here independently of kvl's code."""

from __future__ import annotations

import json

import pytest

from .clips import write_video
from .conftest import make_image

SYSTEM = "You are a helpful assistant"


def reference(user_parts: list[str], question: str, *, no_think: bool = False) -> str:
    """Kimi-VL's chat template and processor: each image <|media_start|>image<|media_content|>
    (embeddings)<|media_end|>, the text right after the last one, no newline."""
    images = "".join(f"<|media_start|>image<|media_content|>{p}<|media_end|>" if p.startswith("<image ") else p
                     for p in user_parts)
    return (f"<|im_system|>system<|im_middle|>{SYSTEM}<|im_end|>"
            f"<|im_user|>user<|im_middle|>{images}{question}<|im_end|>"
            f"<|im_assistant|>assistant<|im_middle|>" + ("◁think▷◁/think▷" if no_think else ""))


def dry(kvl, *args: str) -> list[dict]:
    r = kvl(*args, "--dry-run", "--json")
    assert r.code == 0, r.err
    return [json.loads(line) for line in r.out.splitlines() if line.strip()]


def test_one_image(kvl, scripted, tmp_path):
    img = make_image(tmp_path / "a.png", size=(96, 64))
    (rec,) = dry(kvl, "ask", img, "What is this?", *scripted.args())
    n = rec["image_tokens"][0]
    assert rec["prompt"] == reference([f"<image 1: 96×64 → {n} tokens>"], "What is this?")
    assert rec["settings"]["think_budget"] is None and rec["settings"]["max_tokens"] == 8192


def test_several_images_and_no_think(kvl, scripted, tmp_path):
    a = make_image(tmp_path / "a.png", size=(96, 64))
    b = make_image(tmp_path / "b.png", size=(56, 84), color=(1, 2, 3))
    (rec,) = dry(kvl, "ask", a, b, "What changed?", *scripted.args(), "--no-think")
    n1, n2 = rec["image_tokens"]
    assert rec["prompt"] == reference([f"<image 1: 96×64 → {n1} tokens>", f"<image 2: 56×84 → {n2} tokens>"],
                                      "What changed?", no_think=True)


def test_caption_batch_one_prompt_per_image(kvl, scripted, tmp_path):
    imgs = [make_image(tmp_path / f"{i}.png", size=(64 + 28 * i, 64)) for i in range(2)]
    recs = dry(kvl, "caption", *imgs, *scripted.args(), "--detail", "short")
    assert [r["input"] for r in recs] == [str(p) for p in imgs]
    for i, r in enumerate(recs):
        want = reference([f"<image 1: {64 + 28 * i}×64 → {r['image_tokens'][0]} tokens>"],
                         "Write a one-sentence caption for this image.")
        assert r["prompt"] == want


def test_video_frames_timestamp_then_image(kvl, scripted, tmp_path):
    clip = write_video(tmp_path / "v.mp4")
    (rec,) = dry(kvl, "ask", clip, "What happens?", *scripted.args())
    parts = []
    for k, (t, n) in enumerate(zip(rec["frames"], rec["image_tokens"], strict=True), 1):
        s = int(t)
        parts += [f"[{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}]", f"<image {k}: 160×120 → {n} tokens>"]
    question = "These are frames from a video, in order, each preceded by its timestamp. What happens?"
    assert rec["prompt"] == reference(parts, question)
    assert len(rec["frames"]) == 16


def test_the_engine_reads_what_dry_run_shows(kvl, scripted, tmp_path):
    """The same number of prompt tokens in a real run, and the text tokens of the reference layout
    plus the image tokens add up to it (the tokenizer counted independently of kvl's layout code)."""
    from kvl_cli.engine.llama_handles import Model

    img = make_image(tmp_path / "a.png", size=(96, 64))
    (view,) = dry(kvl, "ask", img, "Why?", *scripted.args(), "--no-think")
    r = kvl("ask", img, "Why?", *scripted.args(), "--no-think", "--json")
    assert json.loads(r.out)["tokens"]["prompt"] == view["prompt_tokens"]
    n_img = view["image_tokens"][0]
    text = reference(["<image X>"], "Why?", no_think=True).replace("<image X>", "")
    with Model(scripted.model, vocab_only=True) as model:
        assert len(model.tokenize(text, special=True)) + n_img == view["prompt_tokens"]


@pytest.mark.parametrize("cmd", ["caption", "ocr"])
def test_dry_run_text_output_shows_prompt_and_settings(kvl, scripted, tmp_path, cmd):
    img = make_image(tmp_path / "a.png")
    r = kvl(cmd, img, *scripted.args(), "--dry-run")
    assert r.code == 0, r.err
    first, blank, settings, tokens = r.out.splitlines()
    assert first.startswith("<|im_system|>system<|im_middle|>") and first.endswith("<|im_middle|>")
    assert blank == "" and settings.startswith("settings: temperature=0.8") and tokens.startswith("prompt: ")


def test_dry_run_batch_keeps_bad_inputs_in_their_place_and_reads_stdin_once(kvl, scripted, tmp_path):
    good = make_image(tmp_path / "good.png", size=(96, 64))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    r = kvl("caption", bad, "-", good, *scripted.args(), "--dry-run", "--json", stdin=good.read_bytes())
    assert r.code == 5, r.err
    recs = [json.loads(line) for line in r.out.splitlines()]
    assert [x["input"] for x in recs] == [str(bad), "-", str(good)]
    assert recs[0]["error"] and "prompt" not in recs[0]
    assert recs[1]["prompt"] == recs[2]["prompt"]  # stdin was read once, before the preview, and kept
