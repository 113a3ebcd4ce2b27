"""#14, the server's pieces without a server: request parsing, stop strings, error mapping, records."""

from __future__ import annotations

import json
import os

import pytest

from kvl_cli.errors import ContextError, InputError
from kvl_cli.serve.errors import ApiError, from_kvl, to_kvl
from kvl_cli.serve.files import AllowedFolders
from kvl_cli.serve.media import _text, decode_data_uri
from kvl_cli.serve.protocol import Defaults, ImagePart, parse_chat
from kvl_cli.serve.replies import StopMatcher


def parse(**body):  # type: ignore[no-untyped-def]
    return parse_chat({"messages": [{"role": "user", "content": "Hi"}], **body}, Defaults())


def test_defaults_and_openai_fields():
    call = parse(max_completion_tokens=50, temperature=0, top_p=0.5, seed=3, stop="x",
                 stream=True, stream_options={"include_usage": True})
    s = call.settings
    assert (s.max_tokens, s.temperature, s.top_p, s.seed, s.think_budget) == (50, 0.0, 0.5, 3, None)
    assert call.stream and call.include_usage and call.stop == ["x"] and call.image_max_tokens == 1024
    assert parse().settings.temperature == 0.8 and parse().settings.max_tokens == 8192


def test_the_kvl_field():
    call = parse(kvl={"think_budget": 64, "image_max_tokens": 256, "top_k": 40, "min_p": 0.1, "progress": True})
    got = (call.settings.think_budget, call.image_max_tokens, call.settings.top_k, call.progress)
    assert got == (64, 256, 40, True)
    assert parse(reasoning_effort="low").settings.think_budget == 256
    assert parse(reasoning_effort="low", kvl={"think_budget": None}).settings.think_budget is None
    with pytest.raises(ApiError) as exc:
        parse(kvl={"image_max_tokens": 4096})  # more than the server loaded with
    assert exc.value.param == "kvl.image_max_tokens"


def test_messages_roles_and_parts():
    body = {"messages": [{"role": "system", "content": "A"}, {"role": "developer", "content": [{"type": "text",
                                                                                             "text": "B"}]},
                         {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}},
                                                      {"type": "text", "text": "Q1"}]},
                         {"role": "assistant", "content": None},
                         {"role": "user", "content": [{"type": "text", "text": "Q2"}, {"type": "text", "text": "Q3"},
                                                      {"type": "image_url", "image_url": "data:y"}]}]}
    call = parse_chat(body, Defaults())
    assert call.system == "A\n\nB" and [t.role for t in call.turns] == ["user", "assistant", "user"]
    assert [p.url for p in call.images] == ["data:x", "data:y"]
    assert _text(call.turns[0].parts, "<M>") == "<M>Q1"
    assert _text(call.turns[2].parts, "<M>") == "Q2\nQ3<M>"
    with pytest.raises(ApiError):  # no image in an assistant turn
        parse_chat({"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": "x"}]},
                                 {"role": "user", "content": "x"}]}, Defaults())


def test_response_format():
    assert parse(response_format={"type": "text"}).schema is None
    call = parse(response_format={"type": "json_object"})
    assert call.schema is not None and call.settings.constraint is not None
    assert json.loads(call.settings.constraint.text) == {"type": "object"}
    with pytest.raises(ApiError) as exc:
        parse(response_format={"type": "json_object"}, kvl={"grammar": "root ::= \"x\""})
    assert exc.value.status == 400


@pytest.mark.parametrize("stops, pieces, out", [
    (["END"], ["abc", "E", "N", "Dxyz"], "abc"),
    (["END"], ["abc", "E", "x"], "abcEx"),
    (["a", "bc"], ["xb", "cd"], "x"),
    ([], ["a", "b"], "ab"),
])
def test_stop_strings_hold_back_what_could_start_one(stops, pieces, out):
    m = StopMatcher(stops)
    text = "".join(m.feed(p) for p in pieces) + m.flush()
    assert text == out and m.hit == any(s in "".join(pieces) for s in stops)


def test_error_mapping_both_ways():
    big = from_kvl(InputError("x.png: oversized: more than 1 MB"))
    assert (big.status, big.code) == (413, "image_too_large")
    ctx = from_kvl(ContextError("too long"))
    assert (ctx.status, ctx.code) == (400, "context_length_exceeded")
    assert isinstance(to_kvl(400, ctx.body()), ContextError)
    assert isinstance(to_kvl(400, from_kvl(InputError("bad")).body()), InputError)
    assert to_kvl(502, "garbage").exit_code == 1


def test_data_uris_are_measured_before_decoding(monkeypatch):
    monkeypatch.setenv("KVL_MAX_INPUT_BYTES", "1000")
    assert decode_data_uri("data:image/png;base64,aGk=", "w") == b"hi"
    with pytest.raises(ApiError) as exc:
        decode_data_uri("data:image/png;base64," + "!" * 2000, "w")  # not even base64: refused on its length
    assert exc.value.status == 413
    with pytest.raises(ApiError) as exc:
        decode_data_uri("data:image/png,rawtext", "w")
    assert exc.value.status == 400


def test_file_urls(tmp_path):
    inside = tmp_path / "in"
    inside.mkdir()
    (inside / "a b.png").write_bytes(b"x")
    folders = AllowedFolders([inside])
    try:
        assert folders.read((inside / "a b.png").as_uri(), "w", 100) == b"x"
        for url in ("file:///etc/passwd", f"file://{inside}/../in/../../x.png"):
            with pytest.raises(ApiError) as exc:
                folders.read(url, "w", 100)
            assert exc.value.status == 403
        with pytest.raises(ApiError) as exc:
            folders.read("file://otherhost/x.png", "w", 100)
        assert exc.value.status == 400
    finally:
        folders.close()


def test_records_of_dead_servers_are_removed(tmp_path, monkeypatch):
    from kvl_cli.serve import record

    rec = record.ServerRecord(pid=os.getpid(), host="127.0.0.1", port=1, model="m", mmproj="p", identity=[],
                              model_name="m", image_max_tokens=1024, api_key="k")
    path = record.write(rec)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [r.port for r in record.running()] == [1]
    dead = record.ServerRecord(**{**rec.__dict__, "pid": 2**22 + 12345, "port": 2})
    record.write(dead)
    assert [r.port for r in record.running()] == [1] and not dead.path().exists()
    record.remove(rec)
    assert not path.exists()
    assert isinstance(ImagePart("u", "w"), ImagePart)
