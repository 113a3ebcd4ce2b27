"""#14: kvl serve against clients nobody here wrote: the openai SDK (streaming and not, images as
data URIs, response_format) and curl, on the toy models; multi-turn, several images, stop strings,
usage, kvl's extra field, and errors in OpenAI's shape."""

from __future__ import annotations

import json
import shutil
import subprocess

import jsonschema
import pytest

from kvl_cli.synthetic import SCRIPTED_ANSWER, SCRIPTED_THINKING

from .serve_util import chat, get, image_message, png_uri, start_server

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(scripted, tmp_path_factory):  # type: ignore[no-untyped-def]
    srv = start_server(scripted, tmp_path_factory.mktemp("serve"), "--parallel", "4", "--queue", "16",
                       "--ctx", "2048")
    yield srv
    assert srv.stop() == 0, srv.log_text()


@pytest.fixture
def client(server):  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_sdk_answer_with_an_image(client):
    resp = client.chat.completions.create(model="kimi-vl", messages=[image_message("What is it?", png_uri())],
                                          temperature=0)
    msg = resp.choices[0].message
    assert msg.content == SCRIPTED_ANSWER and msg.reasoning_content == SCRIPTED_THINKING
    assert resp.choices[0].finish_reason == "stop" and resp.object == "chat.completion"
    u = resp.usage
    assert u.completion_tokens == 8 and u.completion_tokens_details.reasoning_tokens == 5
    assert u.prompt_tokens_details.image_tokens > 0 and u.total_tokens == u.prompt_tokens + 8
    assert resp.model_extra["kvl"]["image_tokens"] == [u.prompt_tokens_details.image_tokens]


def test_sdk_stream_thinking_then_answer(client):
    stream = client.chat.completions.create(model="kimi-vl", messages=[image_message("Why?", png_uri())],
                                            stream=True, stream_options={"include_usage": True})
    thinking, content, finish, usage = "", "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            thinking += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert (thinking, content, finish) == (SCRIPTED_THINKING, SCRIPTED_ANSWER, "stop")
    assert usage is not None and usage.completion_tokens_details.reasoning_tokens == 5


def test_response_format_json_schema(client):
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
              "additionalProperties": False}
    resp = client.chat.completions.create(
        model="kimi-vl", messages=[image_message("Is it red?", png_uri())], max_tokens=200, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}})
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.reasoning_content == SCRIPTED_THINKING  # the thinking stays free
    jsonschema.validate(json.loads(resp.choices[0].message.content), schema)


def test_bad_schema_is_400(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "n", "schema": {"type": 5}}})
    assert exc.value.body["code"] == "invalid_schema" and "response_format" in exc.value.body["message"]


def test_curl_stream(server):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl")
    body = json.dumps({"model": "m", "stream": True, "messages": [image_message("Hi", png_uri())]})
    out = subprocess.run([curl, "-sN", "--max-time", "60", f"{server.url}/v1/chat/completions",
                          "-H", "Content-Type: application/json", "-d", body],
                         capture_output=True, text=True, timeout=90, check=True).stdout
    events = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"])
    assert (reasoning, content) == (SCRIPTED_THINKING, SCRIPTED_ANSWER)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["kvl"]["tokens"]["generated"] == 8


def test_multi_turn_with_several_images(server):
    a, b, c = png_uri(), png_uri((56, 84), (1, 2, 3)), png_uri((84, 56), (9, 9, 200))
    messages = [{"role": "system", "content": "Be brief."}, image_message("What changed?", a, b),
                {"role": "assistant", "content": "The colour."}, image_message("And here?", c)]
    status, _, body = chat(server.port, {"model": "m", "messages": messages, "temperature": 0})
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == SCRIPTED_ANSWER
    assert len(body["kvl"]["image_tokens"]) == 3
    assert body["usage"]["prompt_tokens_details"]["image_tokens"] == sum(body["kvl"]["image_tokens"])
    # the same conversation asked again: its images come from the cache, its prompt from the KV cells
    _, _, again = chat(server.port, {"model": "m", "messages": messages, "temperature": 0})
    assert again["kvl"]["cached"]["prefix_tokens"] > 0
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == again["kvl"]["cached"]["prefix_tokens"]


def test_stop_string_and_extensions(server):
    status, _, body = chat(server.port, {"messages": [{"role": "user", "content": "Hi"}], "stop": [" ans"],
                                         "kvl": {"think_budget": 0}})
    assert status == 200, body
    msg = body["choices"][0]["message"]
    assert msg["content"] == "An" and "reasoning_content" not in msg and body["choices"][0]["finish_reason"] == "stop"
    assert body["kvl"]["tokens"]["thinking"] == 0


def test_max_tokens_is_length(server):
    _, _, body = chat(server.port, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3


def test_reasoning_effort_none_skips_the_thinking(server):
    _, _, body = chat(server.port, {"messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": "none"})
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert body["choices"][0]["message"]["content"] == SCRIPTED_ANSWER


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 9}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "kvl": {"thinkbudget": 3}}, "kvl"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
     "messages[0].content[0]"),
])
def test_bad_requests_are_400_in_openais_shape(server, body, param):
    status, _, answer = chat(server.port, body)
    assert status == 400
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param


def test_a_broken_image_is_400_and_a_prompt_too_long_is_context_length_exceeded(server):
    broken = "data:image/png;base64,aGVsbG8gd29ybGQ="
    status, _, body = chat(server.port, {"messages": [image_message("x", broken)]})
    assert status == 400 and body["error"]["code"] == "invalid_image"
    status, _, body = chat(server.port, {"messages": [{"role": "user", "content": "word " * 3000}]})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    assert "Traceback" not in server.log_text()


def test_a_grammar_llama_cpp_cannot_parse_is_400_and_the_server_goes_on(server):
    status, _, body = chat(server.port, {"messages": [{"role": "user", "content": "x"}],
                                         "kvl": {"grammar": "root ::= ("}})
    assert status == 400 and body["error"]["code"] == "invalid_grammar"
    status, _, body = chat(server.port, {"messages": [{"role": "user", "content": "x"}],
                                         "kvl": {"grammar": 'root ::= "yes" | "no"'}})
    assert status == 200 and body["choices"][0]["message"]["content"] in ("yes", "no")


def test_models_health_and_unknown_routes(server):
    status, models = get(server.port, "/v1/models")
    assert status == 200 and models["data"][0]["object"] == "model"
    status, health = get(server.port, "/health")
    assert status == 200 and health["status"] == "ok" and health["parallel"] == 4
    status, body = get(server.port, "/v2/nothing")
    assert status == 404 and body["error"]["type"] == "not_found_error"


def test_access_log(server):
    chat(server.port, {"messages": [{"role": "user", "content": "Hi"}]})
    lines = [line for line in server.log_text().splitlines() if '"POST /v1/chat/completions HTTP/1.1" 200' in line]
    assert lines and lines[-1].startswith("127.0.0.1 - - [")
