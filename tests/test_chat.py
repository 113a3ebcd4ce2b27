"""kvl chat driven through a pipe (each line a turn), the library face, a running server, and the
engine's reuse of a conversation's cells (the previous answer kept, its thinking cut out)."""

from __future__ import annotations

import json

import pytest

from kvl_cli.synthetic import SCRIPTED_ANSWER, SCRIPTED_THINKING

from .clips import write_video
from .kvlrun import records


def chat(kvl, pair, lines: list[str], *args: str):  # type: ignore[no-untyped-def]
    return kvl("chat", *args, *pair.args(), stdin=("\n".join(lines) + "\n").encode())


def test_piped_turns_give_one_record_each_and_the_follow_up_reuses_the_first(kvl, scripted, images):
    r = chat(kvl, scripted, ["What is it?", "And the colours?", "And the shapes?"], str(images["jpg"]), "--json")
    assert r.code == 0, r.err
    first, second, third = records(r.out)
    assert [first["turn"], second["turn"], third["turn"]] == [1, 2, 3]
    assert first["task"] == second["task"] == "chat"
    assert first["question"] == "What is it?" and second["question"] == "And the colours?"
    assert first["media"] == [str(images["jpg"])] and second["media"] == []
    assert first["answer"] == second["answer"] == SCRIPTED_ANSWER
    assert first["thinking"] == SCRIPTED_THINKING
    assert first["image_tokens"] == second["image_tokens"] == [12]  # the image stays in the conversation
    # the follow-up evaluates only what is new: the first prompt and the answer are still in the cells
    # (the thinking's cells cut out, the answer's moved back; the template's "A","n"," ","a",... spelling
    # of the answer taken as the model's own "An"," answer","." tokens)
    assert second["cached"]["prefix_tokens"] == first["tokens"]["prompt"] + first["tokens"]["answer"]
    assert second["tokens"]["prompt"] > first["tokens"]["prompt"]
    # and again: the first answer, written a second time by the template, is still the model's own tokens
    assert third["cached"]["prefix_tokens"] == second["tokens"]["prompt"] + second["tokens"]["answer"]
    assert r.err == ""


def test_plain_pipe_prints_each_answer_on_its_own_line(kvl, scripted, images):
    r = chat(kvl, scripted, ["What is it?", "", "And then?"], str(images["jpg"]))
    assert r.code == 0
    assert r.out == f"{SCRIPTED_ANSWER}\n{SCRIPTED_ANSWER}\n"  # the blank line is no turn


def test_add_attaches_to_the_next_turn_and_drop_removes_it(kvl, scripted, images):
    green = str(images["webp"])
    r = chat(kvl, scripted, ["What is it?", f"/add {green}", "And this one?", "/drop 1", "Only the second now?"],
             str(images["jpg"]), "--json")
    assert r.code == 0, r.err
    one, two, three = records(r.out)
    assert one["image_tokens"] == [12]
    assert two["media"] == [green] and len(two["image_tokens"]) == 2
    assert two["cached"]["prefix_tokens"] > 0
    assert len(three["image_tokens"]) == 1  # the first image left the conversation
    assert f"added {green} as item 2" in r.err
    assert f"dropped item 1: {images['jpg']}" in r.err


def test_bad_commands_are_an_error_line_and_the_chat_goes_on(kvl, scripted, images, tmp_path):
    r = chat(kvl, scripted, ["/frobnicate", "/add nowhere.png", "/drop 7", "/think maybe", "//etc is a path",
                             "/help", "Still there?"], str(images["jpg"]), "--json")
    assert r.code == 0
    errors = [line for line in r.err.splitlines() if line.startswith("kvl: error:")]
    assert errors == [
        "kvl: error: unknown command /frobnicate (/help lists the commands; //text sends a line starting with /)",
        "kvl: error: nowhere.png: file not found (check the path)",
        "kvl: error: /drop 7: there is no media item 7 (items are numbered 1 to 1)",
        "kvl: error: /think maybe: not on, off or a number (/think on, /think off or /think 256)",
    ]
    assert "/add PATH|URL" in r.err and "/exit" in r.err  # /help
    escaped, last = records(r.out)
    assert escaped["question"] == "/etc is a path"  # // sends a leading slash
    assert last["question"] == "Still there?" and last["answer"] == SCRIPTED_ANSWER


def test_exit_ends_the_chat_before_the_lines_after_it(kvl, scripted, images):
    r = chat(kvl, scripted, ["First?", "/exit", "Never asked?"], str(images["jpg"]), "--json")
    assert r.code == 0
    assert [rec["question"] for rec in records(r.out)] == ["First?"]


def test_think_off_and_choices_shape_the_next_answer(kvl, scripted, images):
    r = chat(kvl, scripted, ["/think off", "Quick?", "/choices yes,no", "Which?", "And free again?"],
             str(images["jpg"]), "--json", "--temperature", "0")
    assert r.code == 0, r.err
    quick, which, free = records(r.out)
    assert quick["thinking"] == "" and quick["tokens"]["thinking"] == 0
    assert which["answer"] in ("yes", "no") and which["data"] == which["answer"]
    assert free["answer"] == SCRIPTED_ANSWER and "data" not in free


def test_choices_on_the_command_line_shape_every_answer(kvl, scripted, images):
    r = chat(kvl, scripted, ["Which?", "And now?"], str(images["jpg"]), "--json", "--choices", "yes,no",
             "--temperature", "0")
    assert r.code == 0, r.err
    assert all(rec["answer"] in ("yes", "no") and rec["data"] == rec["answer"] for rec in records(r.out))


def test_save_and_resume(kvl, scripted, images, tmp_path):
    saved, md = tmp_path / "talk.json", tmp_path / "talk.md"
    r = chat(kvl, scripted, ["What is it?", f"/save {saved}", f"/save {md}"], str(images["jpg"]))
    assert r.code == 0 and f"saved to {saved}" in r.err
    data = json.loads(saved.read_text())
    assert data["turns"][0]["question"] == "What is it?"
    assert data["turns"][0]["answer"] == SCRIPTED_ANSWER
    assert data["turns"][0]["media"] == [{"source": str(images["jpg"]), "kind": "image"}]
    text = md.read_text()
    assert "## Turn 1" in text and "**You:** What is it?" in text and f"**kvl:** {SCRIPTED_ANSWER}" in text
    r = kvl("chat", "--resume", str(saved), "--json", *scripted.args(), stdin=b"And then?\n")
    assert r.code == 0, r.err
    (rec,) = records(r.out)
    assert rec["turn"] == 2 and rec["image_tokens"] == [12]  # the saved turn and its image came back
    assert "resumed" in r.err


def test_resume_of_a_file_that_is_no_conversation_is_exit_3(kvl, scripted, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    r = kvl("chat", "--resume", str(bad), *scripted.args(), stdin=b"Hi?\n")
    assert r.code == 3 and "not a saved kvl conversation" in r.err and r.out == ""


def test_a_missing_file_on_the_command_line_is_exit_3_before_any_model(kvl, tmp_path):
    r = kvl("chat", str(tmp_path / "nope.png"), "--model", str(tmp_path / "no-model.gguf"), stdin=b"Hi?\n")
    assert r.code == 3 and "nope.png: file not found" in r.err


def test_a_video_over_the_context_is_refused_and_the_chat_goes_on(kvl, scripted, images, tmp_path):
    clip = write_video(tmp_path / "clip.mp4")
    r = chat(kvl, scripted, [f"/add {clip}", "What is it?"], str(images["jpg"]), "--json", "--ctx", "512")
    assert r.code == 0
    assert "kvl: error:" in r.err and "frames and the answer need at least" in r.err
    assert "larger --ctx" in r.err
    (rec,) = records(r.out)
    assert rec["image_tokens"] == [12]  # the video was not attached


def test_a_video_is_its_frames_after_their_times(kvl, scripted, tmp_path):
    clip = write_video(tmp_path / "clip.mp4")
    r = chat(kvl, scripted, ["What happens?"], str(clip), "--json", "--max-tokens", "64")
    assert r.code == 0, r.err
    (rec,) = records(r.out)
    assert len(rec["image_tokens"]) == 16 and rec["media"] == [f"{clip} (16 frames)"]


def test_a_pdf_is_its_pages_after_their_labels(kvl, scripted, images, tmp_path):
    from .pdfs import mixed_pages, write_pdf

    doc = write_pdf(tmp_path / "doc.pdf", mixed_pages())
    r = chat(kvl, scripted, ["What is it?", f"/add {doc}", "And the document?"], str(images["jpg"]), "--json")
    assert r.code == 0, r.err
    first, second = records(r.out)
    assert second["media"] == [f"{doc} (3 pages)"] and len(second["image_tokens"]) == 1 + 3
    assert second["cached"]["prefix_tokens"] == first["tokens"]["prompt"] + first["tokens"]["answer"]
    assert f"added {doc} (3 pages) as item 2" in r.err


def test_a_full_context_drops_the_oldest_turns_and_keeps_the_image(kvl, scripted, images):
    lines = ["What is it, tell me more about it please?"] * 8
    r = chat(kvl, scripted, lines, str(images["jpg"]), "--json", "--ctx", "512", "--max-tokens", "20")
    assert r.code == 0, r.err
    recs = records(r.out)
    assert len(recs) == 8 and all(rec["error"] is None for rec in recs)
    assert "the context is full: dropped the 3 oldest turns (their media kept)" in r.err
    assert all(rec["image_tokens"] == [12] for rec in recs)  # the image the questions are about stays
    assert max(rec["tokens"]["prompt"] for rec in recs) < 512


def test_library_chat(scripted, images, tmp_path):
    import kvl_cli

    with kvl_cli.open(scripted.model, scripted.mmproj) as kvl:
        c = kvl.chat([images["jpg"]], temperature=0)
        first = c.ask("What is it?")
        assert first.ok and first.answer == SCRIPTED_ANSWER and first.meta["turn"] == 1
        assert "item 2" in c.command(f"/add {images['webp']}")
        second = c.ask("And this?")
        assert second.result is not None and len(second.result.image_tokens) == 2
        assert second.result.cached.prefix_tokens > 0
        c.save(tmp_path / "c.json")
        assert c.turns == 2 and json.loads((tmp_path / "c.json").read_text())["turns"][1]["question"] == "And this?"


def test_chat_through_a_running_server(kvl, scripted, images, tmp_path, monkeypatch):
    from .serve_util import start_server, wait_for

    srv = start_server(scripted, tmp_path / "srv", "--image-max-tokens", "2048")
    try:
        monkeypatch.setenv("KVL_HOME", str(srv.home / "kvl"))
        r = chat(kvl, scripted, ["What is it?", "And the colours?"], str(images["jpg"]), "--json")
        assert r.code == 0, r.err
        first, second = records(r.out)
        assert first["server"] == second["server"] == srv.url
        assert first["answer"] == second["answer"] == SCRIPTED_ANSWER
        # the server kept the turn, the answer's cells too
        assert second["cached"]["prefix_tokens"] == first["tokens"]["prompt"] + first["tokens"]["answer"]
        # one request per turn (the access log line comes once the stream has closed)
        assert wait_for(lambda: srv.log_text().count('"POST /v1/chat/completions HTTP/1.1" 200') == 2, 10)
    finally:
        srv.stop()


# ---- the engine: a kept answer's cells, its thinking cut out --------------------------------------


@pytest.fixture(scope="module")
def engine(random_pair):  # type: ignore[no-untyped-def]
    from kvl_cli.engine.engine import Engine
    from kvl_cli.engine.types import EngineConfig

    with Engine(EngineConfig(random_pair.model, random_pair.mmproj, n_ctx=1024)) as e:
        yield e


def _last_logits(ctx, tokens: list[int], n_past: int) -> list[float]:  # type: ignore[no-untyped-def]
    import llama_cpp

    ctx.eval_tokens(tokens, n_past, 0, 512, logits_last=True)
    row = llama_cpp.llama_get_logits_ith(ctx.ptr, -1)
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llama_cpp.llama_get_model(ctx.ptr)))
    return [row[i] for i in range(n_vocab)]


def _prep(tokens: list[int]):  # type: ignore[no-untyped-def]
    from kvl_cli.engine.prompt import PreparedPrompt, Segment, segment_keys
    from kvl_cli.engine.types import Request

    segments = [Segment(tokens=list(tokens))]
    keys, ends = segment_keys(segments)
    return PreparedPrompt(Request(user_text=""), None, segments, keys, ends)  # type: ignore[arg-type]


def test_a_kept_answer_is_reused_without_its_thinking(engine):
    """Cells of prompt + thinking + answer; the next prompt is prompt + answer + question. The reuse
    drops the thinking's cells and moves the answer's back (K-shift): the question's logits are those
    of evaluating the new prompt from nothing."""
    worker = engine.workers[0]
    ctx, model, resident = worker.ctx, worker.model, worker.resident
    assert ctx.can_shift
    prompt = model.tokenize("<|im_user|>user<|im_middle|>What is it?<|im_end|><|im_assistant|>assistant<|im_middle|>",
                            special=True)
    thinking = model.tokenize("◁think▷ let me look at it◁/think▷")
    answer = model.tokenize("A red square.")
    question = model.tokenize("<|im_end|><|im_user|>user<|im_middle|>Sure?<|im_end|>", special=True)

    resident.forget(0)
    ctx.eval_tokens(prompt + thinking + answer, 0, 0, 512, logits_last=False)
    resident.holds(0, _prep(prompt))
    resident.keep_answer(0, len(prompt), thinking + answer, (len(prompt), len(prompt) + len(thinking)))

    follow = _prep(prompt + answer + question)
    reuse = resident.reuse(follow, 0)
    assert reuse.n_past == len(prompt) + len(answer)
    assert reuse.shift == (len(prompt), len(prompt) + len(thinking), len(answer))
    warm = _last_logits(ctx, question, reuse.n_past)

    resident.forget(0)
    cold = _last_logits(ctx, prompt + answer + question, 0)
    scale = max(abs(v) for v in cold)
    assert max(abs(a - b) for a, b in zip(warm, cold, strict=True)) <= 1e-2 * scale
    resident.forget(0)


def test_a_prompt_sharing_part_of_a_text_chunk_reuses_that_part(engine):
    worker = engine.workers[0]
    ctx, model, resident = worker.ctx, worker.model, worker.resident
    first = model.tokenize("The first question, a long one.")
    resident.forget(0)
    ctx.eval_tokens(first, 0, 0, 512, logits_last=False)
    resident.holds(0, _prep(first))
    longer = _prep(first[:-3] + model.tokenize(" and then another."))
    reuse = resident.reuse(longer, 0)
    assert (reuse.chunks, reuse.tokens, reuse.n_past, reuse.shift) == (0, len(first) - 3, len(first) - 3, None)
    ctx.eval_tokens(first[-3:], len(first) - 3, 0, 512, logits_last=False)  # the cells hold ``first`` again
    resident.holds(0, _prep(first))
    same = _prep(first)  # the whole chunk again: its last token is evaluated again for the logits
    assert resident.reuse(same, 0).n_past == len(first) - 1
    resident.forget(0)


@pytest.mark.parametrize("name, data, question", [
    ("bad.pdf", b"%PDF-1.4\nnot really a document", "Still there?"),  # a damaged PDF
    ("broken.png", b"\x89PNG\r\n\x1a\nnot really", "What is it?"),  # an image whose pixels cannot be read
])
def test_media_that_cannot_be_read_is_an_error_line(kvl, scripted, images, tmp_path, name, data, question):
    bad = tmp_path / name
    bad.write_bytes(data)
    r = chat(kvl, scripted, [f"/add {bad}", question], str(images["jpg"]), "--json")
    assert r.code == 0
    assert f"kvl: error: {bad}" in r.err
    (rec,) = records(r.out)
    assert rec["image_tokens"] == [12]



@pytest.mark.parametrize(("kept", "wanted", "expected"), [
    (["An", " answer", "."], ["A", "n", " ", "a", "n", "s", "w", "e", "r", ".", "<|im_end|>"], (3, 10)),
    (["An", " answer"], ["A", "n", " ", "a", "n", "s", "w", "e", "r", "."], (2, 9)),  # the prompt goes on
    (["An", " ans"], ["A", "n", " answer"], (1, 2)),  # " ans" ends inside " answer": back to the last shared end
    (["No"], ["A", "n"], (0, 0)),
    ([], ["A"], (0, 0)),
])
def test_align_matches_the_same_bytes_in_other_tokens(kept, wanted, expected):
    from kvl_cli.engine.prefix import align

    vocab = sorted(set(kept) | set(wanted))
    ids = {text: i for i, text in enumerate(vocab)}
    assert align([ids[t] for t in kept], [ids[t] for t in wanted], lambda i: vocab[i].encode()) == expected


def test_the_request_repeats_the_turns_with_their_media_in_order():
    from kvl_cli.chat.conversation import Conversation
    from kvl_cli.chat.media import MediaItem
    from kvl_cli.engine.types import GenerationSettings, ImageInput

    def image(name: str) -> ImageInput:
        return ImageInput(b"\0\0\0", 1, 1, name, name)

    conv = Conversation()
    conv.pending = [MediaItem("a.png", "image", [image("a")])]
    conv.record("What is it?", "A cat.", "hmm", "stop")
    conv.pending = [MediaItem("v.mp4", "video", [image("f1"), image("f2")], ["[00:00:00]", "[00:00:02]"])]
    req = conv.request("And now?", "<M>", GenerationSettings())
    assert req.messages == [("user", "<M>What is it?"), ("assistant", "A cat.")]
    assert req.user_text == "[00:00:00]<M>[00:00:02]<M>And now?"
    assert [i.id for i in req.images] == ["a", "f1", "f2"] and req.keep_answer
    assert [m.source for m in conv.media()] == ["a.png", "v.mp4"]
    conv.record("And now?", "A dog.", "", "stop")
    assert conv.drop_oldest() and conv.turns[0].question == "And now?"
    assert [m.source for m in conv.turns[0].media] == ["a.png", "v.mp4"]  # the dropped turn's media stays
    assert conv.drop_oldest() and not conv.turns and [m.source for m in conv.pending] == ["a.png", "v.mp4"]
    assert not conv.drop_oldest()


def test_resume_without_a_saved_image_says_so_and_goes_on(kvl, scripted, tmp_path):
    from .conftest import make_image

    photo = make_image(tmp_path / "gone.png")
    saved = tmp_path / "talk.json"
    assert chat(kvl, scripted, ["What is it?", f"/save {saved}"], str(photo)).code == 0
    photo.unlink()
    r = kvl("chat", "--resume", str(saved), "--json", *scripted.args(), stdin=b"And then?\n")
    assert r.code == 0
    assert f"kvl: warning: {saved}: media left out: {photo}: file not found" in r.err
    (rec,) = records(r.out)
    assert rec["turn"] == 2 and rec["image_tokens"] == [] and rec["answer"] == SCRIPTED_ANSWER
