"""#18: constrained answers through llguidance. Every keyword it implements is honoured: on the random
toy model at --temperature 1 (its logits are noise, so only the mask keeps it in shape) every answer
validates, never exit 5; a keyword llguidance cannot honour is exit 2 naming it, before anything
loads; the constraint starts after the thinking, even when the model ends while thinking."""

from __future__ import annotations

import json

import jsonschema
import pytest

from kvl_cli.engine.constraint import kvl_schema

# the issue's four (integer and number ranges; a pattern and string lengths; minItems/maxItems with a
# $ref; an anyOf of a range and a boolean) and more: exclusive bounds, enum/const, oneOf, format
SCHEMAS = {
    "stars": {"type": "object", "required": ["stars"], "properties": {"stars": {"type": "integer", "minimum": 1,
                                                                              "maximum": 5}}},
    "ranges": {"type": "object", "required": ["score", "ratio", "n"], "properties": {
        "score": {"type": "number", "minimum": -2.5, "maximum": 7.25},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "n": {"type": "integer", "exclusiveMinimum": 10, "maximum": 12}}},
    "pattern": {"type": "object", "required": ["code", "name"], "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "name": {"type": "string", "minLength": 2, "maxLength": 5}}},
    "ref_items": {"type": "object", "required": ["points"], "$defs": {"pt": {
        "type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 2}},
        "properties": {"points": {"type": "array", "items": {"$ref": "#/$defs/pt"}, "minItems": 1, "maxItems": 3}}},
    "any_of": {"type": "object", "required": ["v"], "properties": {"v": {"anyOf": [
        {"type": "integer", "minimum": 100, "maximum": 200}, {"type": "boolean"}]}}},
    "enum_const": {"type": "object", "required": ["kind", "version", "tag"], "properties": {
        "kind": {"enum": ["cat", "dog", 3, None]}, "version": {"const": "v1"},
        "tag": {"type": ["string", "null"], "maxLength": 3}}},
    "one_of": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 99},
                         {"type": "string", "pattern": "^x+$", "maxLength": 4}]},
    "any_value": {"type": "object", "required": ["x"], "properties": {"x": {}}},  # any JSON, its numbers finite
    "format": {"type": "object", "required": ["day", "id"], "properties": {
        "day": {"type": "string", "format": "date"}, "id": {"type": "string", "format": "uuid"}}},
}
SEEDS = range(5)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_answer_of_a_random_model_validates(kvl, random_pair, images, name):
    schema = SCHEMAS[name]
    for seed in SEEDS:
        r = kvl("ocr", images["jpg"], *random_pair.args(), "--schema", json.dumps(schema), "--seed", str(seed),
                "--temperature", "1", "--think-budget", "12", "--max-tokens", "400", "--json",
                "--image-max-tokens", "16")
        assert r.code == 0, (seed, r.err)
        rec = json.loads(r.out)
        jsonschema.validate(rec["data"], schema)
        assert json.loads(rec["answer"]) == rec["data"]


@pytest.fixture(scope="module")
def ends_early(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Two scripted models that end (an end token) before any answer: one while it thinks, one at once."""
    from kvl_cli.synthetic import write_projector
    from kvl_cli.synthetic.toy import write_text_model

    d = tmp_path_factory.mktemp("ends")
    mmproj = write_projector(d / "mmproj.gguf")
    thinking = write_text_model(d / "thinking.gguf", chain=[("<|im_middle|>", "◁think▷"), ("◁think▷", " some"),
                                                            (" some", "<|im_end|>")])
    at_once = write_text_model(d / "at-once.gguf", chain=[("<|im_middle|>", "<|im_end|>")])
    return {"thinking": ["--model", str(thinking), "--mmproj", str(mmproj)],
            "at_once": ["--model", str(at_once), "--mmproj", str(mmproj)]}


@pytest.mark.parametrize("model", ["thinking", "at_once"])
def test_a_model_that_ends_before_its_answer_still_answers_in_shape(kvl, ends_early, images, model):
    """The issue's empty answers (seed 21, --think-budget 12): an end token sampled while the model
    thought (or before it wrote anything) ended the answer before its constraint began. Now the
    thinking closes there and the constrained answer still comes."""
    r = kvl("ask", images["jpg"], "Which?", *ends_early[model], "--choices", "red,blue", "--temperature", "0",
            "--json")
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    assert rec["data"] in ("red", "blue") and rec["answer"] == rec["data"]
    assert rec["thinking"] == ("some" if model == "thinking" else "") and not rec["think_budget_hit"]
    free = json.loads(kvl("ask", images["jpg"], "Which?", *ends_early[model], "--temperature", "0", "--json").out)
    assert free["answer"] == "" and free["finish_reason"] == "stop"  # without a constraint it may end as it likes


def test_the_thinking_stays_free_and_the_pipe_gets_the_document(kvl, scripted, images):
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "minimum": 3,
                                                                         "maximum": 4}}}
    rec = json.loads(kvl("ask", images["jpg"], "How many?", *scripted.args(), "--schema", json.dumps(schema),
                         "--json", "--temperature", "0").out)
    assert rec["thinking"] == "some thought" and rec["data"]["n"] in (3, 4)
    r = kvl("ask", images["jpg"], "How many?", *scripted.args(), "--schema", json.dumps(schema), "--temperature", "0")
    assert r.code == 0 and json.loads(r.out) == rec["data"], r.err


@pytest.mark.parametrize("schema, keyword", [
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "not"),
    ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
    ({"type": "string", "format": "color"}, "format: color"),
    ({"$ref": "https://example.com/s.json"}, "https://example.com/s.json"),
])
def test_a_keyword_llguidance_cannot_honour_is_exit_2_naming_it(kvl, images, schema, keyword):
    r = kvl("ask", images["jpg"], "Which?", "--model", "/nonexistent.gguf", "--schema", json.dumps(schema))
    assert r.code == 2 and r.out == "", r.err
    assert keyword in r.err and "--schema" in r.err and len(r.err.splitlines()) == 1, r.err


def test_kvl_schema_bounds_numbers_and_closes_objects_everywhere():
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 3}}, "$defs": {
        "b": {"type": "object", "properties": {"c": {"type": ["number", "null"]}}, "additionalProperties": True}},
        "anyOf": [{"type": "number", "exclusiveMaximum": 0}]}
    out = kvl_schema(schema)
    assert out["additionalProperties"] is False  # an explicit true stays open, its values any JSON, numbers bounded
    assert out["$defs"]["b"]["additionalProperties"] == {"$ref": "#/$defs/kvl-any-json"}
    assert out["properties"]["a"] == {"type": "integer", "minimum": 3, "maximum": 10**15}
    assert out["$defs"]["b"]["properties"]["c"]["minimum"] == -1e15
    assert out["anyOf"][0] == {"type": "number", "exclusiveMaximum": 0, "minimum": -1e15}
    assert schema["properties"]["a"] == {"type": "integer", "minimum": 3}  # the user's schema is untouched
    anything = kvl_schema({"type": "object", "properties": {"x": {"description": "anything"}}, "required": ["x"]})
    assert anything["properties"]["x"]["$ref"] == "#/$defs/kvl-any-json"
    assert {"type": "number", "minimum": -1e15, "maximum": 1e15} in anything["$defs"]["kvl-any-json"]["anyOf"]
    assert kvl_schema({"type": "array"})["items"] == {"$ref": "#/$defs/kvl-any-json"}


# ---- kvl serve ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_server(random_pair, tmp_path_factory):  # type: ignore[no-untyped-def]
    from .serve_util import start_server

    srv = start_server(random_pair, tmp_path_factory.mktemp("constrained"), "--image-max-tokens", "16")
    yield srv
    srv.stop()


def _ask(port: int, **extra: object) -> tuple[int, object]:
    from .serve_util import chat, image_message, png_uri

    body = {"messages": [image_message("Which?", png_uri())], "temperature": 1, "max_tokens": 400,
            "kvl": {"think_budget": 12, **extra.pop("kvl", {})}, **extra}  # type: ignore[dict-item]
    status, _, reply = chat(port, body)
    return status, reply


def test_serve_response_format_is_honoured_keyword_by_keyword(random_server):
    for name in ("stars", "ref_items"):
        for seed in range(2):
            status, reply = _ask(random_server.port, seed=seed, response_format={
                "type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name]}})
            assert status == 200, reply
            jsonschema.validate(json.loads(reply["choices"][0]["message"]["content"]), SCHEMAS[name])


def test_serve_a_schema_llguidance_cannot_honour_is_400_invalid_schema(random_server):
    status, reply = _ask(random_server.port, response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "array", "uniqueItems": True}}})
    assert status == 400 and reply["error"]["code"] == "invalid_schema", reply
    assert "uniqueItems" in reply["error"]["message"] and reply["error"]["param"] == "response_format"


def test_serve_gbnf_goes_through_llguidance(random_server):
    for seed in range(3):
        status, reply = _ask(random_server.port, seed=seed, kvl={"grammar": 'root ::= "yes" | "no" | [0-9]{2}'})
        assert status == 200, reply
        content = reply["choices"][0]["message"]["content"]
        assert content in ("yes", "no") or (len(content) == 2 and content.isdigit()), content
    status, reply = _ask(random_server.port, kvl={"grammar": "root ::= ("})
    assert status == 400 and reply["error"]["code"] == "invalid_grammar", reply


def test_the_cli_sends_its_schema_to_a_running_server(kvl, random_server, random_pair, images, monkeypatch):
    monkeypatch.setenv("KVL_HOME", str(random_server.home / "kvl"))
    schema = SCHEMAS["any_of"]
    r = kvl("ask", images["jpg"], "Which?", *random_pair.args(), "--schema", json.dumps(schema), "--seed", "3",
            "--temperature", "1", "--think-budget", "12", "--max-tokens", "400", "--json", "--image-max-tokens", "16")
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    assert rec["server"] == random_server.url
    jsonschema.validate(rec["data"], schema)


def test_bench_reports_the_constrained_token_cost(kvl, random_pair):
    r = kvl("bench", *random_pair.args(), "--image-tokens", "16", "--prompt-tokens", "8", "--gen-tokens", "4",
            "--parallel", "1", "--json")
    assert r.code == 0, r.err
    c = json.loads(r.out)["constrained"]
    assert set(c) >= {"plain_ms", "allowed_ms", "refused_ms", "mask_ms", "mask_max_ms", "tokenizer_s", "token_ms"}
    assert 0 < c["plain_ms"] and 0 < c["mask_ms"] <= c["mask_max_ms"] and c["tokenizer_s"] >= 0
    # refusing costs a second sampling pass: more than an allowed token
    assert c["refused_ms"] > c["allowed_ms"] > 0
    table = kvl("bench", *random_pair.args(), "--image-tokens", "16", "--prompt-tokens", "8", "--gen-tokens", "2",
                "--parallel", "1")
    assert "constrained, refused" in table.out and "token mask" in table.out


# ---- #18 fixes: near --max-tokens the answer steers to finish ----------------------------------

# nothing bounds these: left alone, the random model's strings and arrays run to --max-tokens (exit 5)
UNBOUNDED = {
    "strings": {"type": "object", "required": ["a", "b"], "properties": {
        "a": {"type": "string"}, "b": {"type": "string", "minLength": 3}}},
    "arrays": {"type": "object", "required": ["xs", "ys"], "properties": {
        "xs": {"type": "array", "items": {"type": "string"}},
        "ys": {"type": "array", "items": {"type": "integer"}, "minItems": 2}}},
    "nested": {"type": "object", "required": ["o"], "properties": {"o": {
        "type": "object", "required": ["p", "q"], "properties": {
            "p": {"type": "array", "items": {"type": "object", "required": ["s"],
                                             "properties": {"s": {"type": "string"}}}},
            "q": {"type": "string"}}}}},
    "issue": {"type": "object", "required": ["title", "tags", "n"], "properties": {
        "title": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
        "n": {"type": "integer", "minimum": 1, "maximum": 5}}},
}


@pytest.mark.parametrize("name", sorted(UNBOUNDED))
def test_unbounded_strings_and_arrays_finish_within_max_tokens(kvl, random_pair, images, name):
    schema = UNBOUNDED[name]
    for seed in range(4):
        r = kvl("ask", images["jpg"], "describe", *random_pair.args(), "--schema", json.dumps(schema),
                "--seed", str(seed), "--temperature", "1", "--think-budget", "8", "--max-tokens", "100", "--json",
                "--image-max-tokens", "16")
        assert r.code == 0, (seed, r.err)
        rec = json.loads(r.out)
        jsonschema.validate(rec["data"], schema)
        assert rec["tokens"]["generated"] <= 100 and rec["finish_reason"] == "stop"


def test_steering_leaves_an_answer_that_ends_early_alone(kvl, random_pair, images):
    """Steering acts only in the last max(24, 10%) tokens of --max-tokens: an answer that ends before
    them is the same token for token whatever the limit."""
    schema = json.dumps(UNBOUNDED["arrays"])
    answers = []
    for limit in ("300", "3000"):
        r = kvl("ask", images["jpg"], "describe", *random_pair.args(), "--schema", schema, "--seed", "0",
                "--temperature", "1", "--think-budget", "8", "--max-tokens", limit, "--json",
                "--image-max-tokens", "16")
        assert r.code == 0, r.err
        answers.append(json.loads(r.out))
    assert answers[0]["tokens"]["generated"] < 300 - 30
    assert answers[0]["answer"] == answers[1]["answer"]


# ---- #18 fixes: what llguidance cannot finish is refused before anything loads -----------------

SELF_REFERENCE = {"type": "object", "required": ["a"], "properties": {"a": {"$ref": "#"}}}


@pytest.mark.parametrize("schema, says", [
    ({"$ref": "#"}, "refers to itself"),
    ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "refers to itself"),
    (SELF_REFERENCE, "self-reference"),
    ({"type": "integer", "minimum": 1e30, "maximum": 1000000000000000000000000000005}, "9223372036854775807"),
    ({"enum": [123456789012345678901234567890]}, "9223372036854775807"),
    ({"type": "number", "minimum": 1e20}, "1e19"),
])
def test_a_schema_no_answer_can_finish_is_exit_2_in_one_line(kvl, images, schema, says):
    r = kvl("ask", images["jpg"], "Which?", "--model", "/nonexistent.gguf", "--schema", json.dumps(schema))
    assert r.code == 2 and r.out == "", r.err
    assert says in r.err and "--schema" in r.err and len(r.err.splitlines()) == 1 and len(r.err) < 700, r.err


def test_a_large_lower_bound_still_gets_an_upper_one():
    assert kvl_schema({"type": "number", "minimum": 1e16})["maximum"] == 1e18
    assert kvl_schema({"type": "integer", "minimum": 10**17})["maximum"] == 2**63 - 1
    assert kvl_schema({"type": "integer", "maximum": -10**16})["minimum"] == -10**18


@pytest.mark.parametrize("grammar", ["root ::= root", 'root ::= "a"{100000}', 'start: %json {"$ref":"#"}'])
def test_serve_a_grammar_no_answer_can_finish_is_400_before_it_runs(random_server, grammar):
    status, reply = _ask(random_server.port, kvl={"grammar": grammar})
    assert status == 400 and reply["error"]["code"] == "invalid_grammar", reply
    assert len(reply["error"]["message"]) < 700 and "\n" not in reply["error"]["message"], reply


def test_serve_gbnf_unicode_escapes_and_many_alternatives(random_server):
    for seed in range(2):
        grammar = r'root ::= [\u00e0-\u00ff]{2} "\U0001F600"'
        status, reply = _ask(random_server.port, seed=seed, kvl={"grammar": grammar})
        assert status == 200, reply
        content = reply["choices"][0]["message"]["content"]
        assert len(content) == 3 and all("\u00e0" <= c <= "\u00ff" for c in content[:2]) and content[2] == "\U0001F600"
    words = [f"w{i}" for i in range(2001)]
    status, reply = _ask(random_server.port, kvl={"grammar": "root ::= " + " | ".join(f'"{w}"' for w in words)})
    assert status == 200 and reply["choices"][0]["message"]["content"] in words, reply


# ---- #18 fixes: --schema reading and the document on stdout -------------------------------------

@pytest.mark.parametrize("name", ["[x].json", "falsepositives.json", "true"])
def test_an_existing_schema_file_wins_over_inline_json(kvl, scripted, images, tmp_path, monkeypatch, name):
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 4}}}
    (tmp_path / name).write_text(json.dumps(schema))
    monkeypatch.chdir(tmp_path)
    r = kvl("ask", images["jpg"], "How many?", *scripted.args(), "--schema", name, "--temperature", "0")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["n"] in (3, 4)
    assert r.out == json.dumps(data, separators=(",", ":")) + "\n"  # compact, as docs/options.md and the server


def test_schema_true_is_any_json_and_false_is_refused(kvl, scripted, images):
    r = kvl("ask", images["jpg"], "Which?", *scripted.args(), "--schema", "true", "--temperature", "0", "--json",
            "--max-tokens", "200")
    assert r.code == 0, r.err
    assert json.loads(json.loads(r.out)["answer"]) == json.loads(r.out)["data"]
    r = kvl("ask", images["jpg"], "Which?", "--model", "/nonexistent.gguf", "--schema", "false")
    assert r.code == 2 and "false" in r.err and len(r.err.splitlines()) == 1, r.err


def test_min_properties_over_open_keys_is_refused_as_llguidance_may_repeat_a_key(kvl, images):
    """The issue's {"x3":0,"x4":1,"x4":1,"x0":0}: four keys to llguidance, three to the parser."""
    schema = {"type": "object", "patternProperties": {"^x[0-9]$": {"type": "integer", "minimum": 0, "maximum": 1}},
              "additionalProperties": False, "minProperties": 3, "maxProperties": 5}
    r = kvl("ask", images["jpg"], "Which?", "--model", "/nonexistent.gguf", "--schema", json.dumps(schema))
    assert r.code == 2 and "minProperties" in r.err and len(r.err.splitlines()) == 1, r.err
    open_map = {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2}
    r = kvl("ask", images["jpg"], "Which?", "--model", "/nonexistent.gguf", "--schema", json.dumps(open_map))
    assert r.code == 2 and "minProperties" in r.err, r.err


def test_pattern_properties_without_a_count_still_answer(kvl, random_pair, images):
    schema = {"type": "object", "patternProperties": {"^x[0-9]$": {"type": "integer", "minimum": 0, "maximum": 1}},
              "additionalProperties": False, "maxProperties": 3}
    for seed in range(3):
        r = kvl("ask", images["jpg"], "Which?", *random_pair.args(), "--schema", json.dumps(schema),
                "--seed", str(seed), "--temperature", "1", "--think-budget", "8", "--max-tokens", "150", "--json",
                "--image-max-tokens", "16")
        assert r.code == 0, (seed, r.err)
        jsonschema.validate(json.loads(r.out)["data"], schema)


def test_gbnf_unicode_escapes_keep_their_zeros_and_closers_are_only_quotes_and_brackets():
    from kvl_cli.engine.constraint import Closers, _unicode_escapes

    assert _unicode_escapes(r'root ::= [\u00e0-\u00ff] "\U0001F600" "\u0022"') == 'root ::= [à-ÿ] "😀" "\\x22"'
    assert _unicode_escapes(r'root ::= "\\u00e0"') == r'root ::= "\\u00e0"'  # an escaped backslash, then text
    closers = Closers.of([b'"', b'"]}', b"]", b"}]", b"a", b'" ', b" ]", b'"a', b"],"])
    assert closers.quote.tolist() == [0, 1] and closers.bracket.tolist() == [2, 3]
