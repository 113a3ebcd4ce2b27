"""#11 part 2: --schema and --choices: the thinking stays free, the answer after it follows the schema,
is validated, and only a whole valid document reaches stdout."""

from __future__ import annotations

import json

import jsonschema
import pytest

SCHEMAS = {
    "nested": {"type": "object", "required": ["who", "where"], "properties": {
        "who": {"type": "object", "required": ["name", "age"], "properties": {
            "name": {"type": "string", "maxLength": 6}, "age": {"type": "integer"}}},
        "where": {"enum": ["inside", "outside"]}}},
    "array": {"type": "object", "required": ["tags", "total"], "properties": {
        "tags": {"type": "array", "items": {"enum": ["cat", "dog", "bird"]}, "minItems": 1, "maxItems": 3},
        "total": {"type": "number"}}},
    "pattern": {"type": "object", "required": ["code", "ok"], "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"}, "ok": {"type": "boolean"}}},
    "list": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 2, "maxItems": 2},
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_model_always_gives_valid_json_after_a_free_thinking(kvl, random_pair, images, name):
    schema = SCHEMAS[name]
    for seed in range(6):
        r = kvl("ocr", images["jpg"], *random_pair.args(), "--schema", json.dumps(schema), "--seed", str(seed),
                "--think-budget", "4", "--max-tokens", "400", "--json", "--image-max-tokens", "16")
        assert r.code == 0, r.err
        rec = json.loads(r.out)
        jsonschema.validate(rec["data"], schema)
        assert json.loads(rec["answer"]) == rec["data"]
        # the random model rarely opens a thinking; when it does, the thinking ran its budget freely
        assert not rec["thinking"] or (rec["think_budget_hit"] and rec["tokens"]["thinking"] >= 4)


def test_pipe_gets_the_document_alone_and_the_thinking_is_untouched(kvl, scripted, images):
    r = kvl("ask", images["jpg"], "Which?", *scripted.args(), "--choices", "yes,no", "--temperature", "0")
    assert r.code == 0, r.err
    assert r.out in ("yes\n", "no\n")  # --choices: the bare choice
    rec = json.loads(kvl("ask", images["jpg"], "Which?", *scripted.args(), "--choices", "yes,no", "--json",
                         "--temperature", "0").out)
    assert rec["thinking"] == "some thought"  # the scripted thinking, unconstrained
    assert rec["data"] in ("yes", "no") and rec["answer"] == rec["data"]
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    r = kvl("caption", images["jpg"], *scripted.args(), "--schema", json.dumps(schema), "--temperature", "0")
    assert r.code == 0, r.err
    doc = json.loads(r.out)  # stdout is exactly one JSON document
    jsonschema.validate(doc, schema)


def test_no_think_constrains_from_the_first_token(kvl, scripted, images):
    rec = json.loads(kvl("ask", images["jpg"], "Which?", *scripted.args(), "--choices", "red,blue", "--no-think",
                         "--json").out)
    assert rec["thinking"] == "" and rec["data"] in ("red", "blue")


def test_schema_file(kvl, scripted, images, tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(SCHEMAS["pattern"]))
    rec = json.loads(kvl("ocr", images["jpg"], *scripted.args(), "--schema", str(path), "--json").out)
    jsonschema.validate(rec["data"], SCHEMAS["pattern"])


@pytest.mark.parametrize("args, words", [
    (["--schema", '{"type": "bogus"}'], "not a valid JSON Schema"),
    (["--schema", "{not json"], "--schema: not JSON"),
    (["--schema", "missing.json"], "--schema missing.json: cannot read it"),
    (["--schema", "[1, 2]"], "a JSON Schema is an object"),
    (["--choices", "yes"], "give at least two choices"),
    (["--choices", "a,b", "--schema", '{"type": "string"}'], "do not go together"),
])
def test_a_bad_schema_is_exit_2_before_anything_loads(kvl, images, args, words):
    r = kvl("caption", images["jpg"], "--model", "/nonexistent.gguf", *args)
    assert r.code == 2 and r.out == ""
    assert words in r.err and len(r.err.splitlines()) == 1, r.err


def test_an_answer_cut_short_is_an_error_never_half_a_document(kvl, random_pair, images, tmp_path):
    schema = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}
    args = ("--schema", json.dumps(schema), "--no-think", "--max-tokens", "6", "--seed", "1",
            *random_pair.args(), "--image-max-tokens", "16")
    r = kvl("ocr", images["jpg"], *args)
    assert r.code == 5 and r.out == ""
    assert "cut by --max-tokens before its JSON was complete" in r.err
    # in a batch, the other inputs still give their documents (in order) and the exit code says some failed
    r = kvl("ocr", images["jpg"], images["png"], *args, "--json")
    recs = [json.loads(line) for line in r.out.splitlines()]
    assert r.code == 5 and [x["input"] for x in recs] == [str(images["jpg"]), str(images["png"])]
    assert all(x["error"] and "cut by --max-tokens" in x["error"] and x["exit_code"] == 5 for x in recs)
