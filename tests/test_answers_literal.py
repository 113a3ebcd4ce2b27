"""#22, the CLI's side: a constrained answer is always JSON (no Infinity or NaN: the grammar cannot
spell them and the check refuses them), --choices values are literal strings whatever they hold
(quotes, backslashes; ``\\,`` is a comma inside one), --schema FILE is read within the input cap,
names piped on stdin that are not UTF-8 are read as names, and a stdin that cannot be read is one
line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvl_cli.engine.types import FinishReason, Result, Timings, Tokens
from kvl_cli.schema import AnswerError, AnswerSchema, checked, choices_schema, finite

from .conftest import REPO, kvl_env, make_image


def _strict(text: str) -> object:
    def refuse(name: str) -> object:
        raise ValueError(name)

    return json.loads(text, parse_constant=refuse)


def _result(answer: str) -> Result:
    return Result(answer=answer, thinking="", finish_reason=FinishReason.STOP, tokens=Tokens(), timings=Timings(),
                  image_tokens=[])


def test_the_constraint_cannot_spell_a_number_too_large_for_json():
    from kvl_cli.engine.constraint import kvl_schema

    bounded = kvl_schema(checked({"type": "object", "properties": {"x": {"type": "number"}}}).schema)
    # an unbounded number gets ±1e15: llguidance then writes it in plain digits, never 1e999
    assert bounded["properties"]["x"] == {"type": "number", "minimum": -1e15, "maximum": 1e15}
    assert bounded["additionalProperties"] is False


@pytest.mark.parametrize("answer", ['{"x": 1e999}', '{"x": -1e400}', '{"x": Infinity}', '{"x": NaN}',
                                    "[" + "1" * 400 + ".5]"])
def test_the_check_refuses_what_is_not_finite(answer):
    schema = AnswerSchema({})
    with pytest.raises(AnswerError):
        schema.parse(_result(answer))


def test_finite_looks_everywhere():
    assert finite({"a": [1, 2.5, {"b": "inf"}]}) and not finite({"a": [{"b": [float("nan")]}]})
    assert AnswerSchema({}).text({"x": 1e300}) == '{"x":1e+300}'  # compact (#18)


def test_random_answers_to_a_number_schema_are_strict_json(kvl, random_pair, images):
    schema = {"type": "object", "required": ["x", "y"], "properties": {"x": {"type": "number"}, "y": {}}}
    for seed in range(4):
        r = kvl("ocr", images["jpg"], *random_pair.args(), "--schema", json.dumps(schema), "--seed", str(seed),
                "--think-budget", "4", "--max-tokens", "300", "--json", "--image-max-tokens", "16")
        assert r.code in (0, 5), r.err
        rec = _strict(r.out)  # the --json line itself is JSON whatever the answer held
        if r.code == 0:
            assert isinstance(rec, dict) and _strict(rec["answer"]) == rec["data"]


@pytest.mark.parametrize("value, choices", [
    ('say "hi",no', ('say "hi"', "no")),
    ("C:\\tmp,D:\\new", ("C:\\tmp", "D:\\new")),
    ("yes\\, sure,no\\,,\\", ("yes, sure", "no,", "\\")),
    ("a\\\\b,'c'", ("a\\\\b", "'c'")),
])
def test_choices_are_literal_strings(value, choices):
    schema = choices_schema(value)
    assert schema.choices == choices
    assert json.loads(schema.constraint().text) == {"enum": list(choices)}  # compiled by llguidance as they are


@pytest.mark.parametrize("value", ['say "hi",no', "C:\\tmp,D:\\new"])
def test_choices_with_quotes_and_backslashes_answer_one_of_them(kvl, random_pair, images, value):
    allowed = set(choices_schema(value).choices)
    for seed in range(3):
        r = kvl("ask", images["jpg"], "Which?", *random_pair.args(), "--choices", value, "--seed", str(seed),
                "--think-budget", "4", "--max-tokens", "300", "--image-max-tokens", "16")
        assert r.code == 0, r.err
        assert r.out.removesuffix("\n") in allowed, r.out


def test_a_schema_file_is_read_within_the_input_cap(kvl, images, monkeypatch):
    monkeypatch.setenv("KVL_MAX_INPUT_BYTES", "1000")
    r = kvl("ask", images["jpg"], "Which?", "--schema", "/dev/zero")
    assert r.code == 2 and "oversized" in r.err and len(r.err.strip().splitlines()) == 1, r.err


def test_a_schema_nested_too_deep_is_a_usage_error(kvl, images, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"items": ' * 5000 + "{}" + "}" * 5000)
    r = kvl("ask", images["jpg"], "Which?", "--schema", str(deep))
    assert r.code == 2 and "--schema" in r.err and "Traceback" not in r.err, r.err


def test_names_on_stdin_that_are_not_utf8_are_names(kvl, scripted, tmp_path, monkeypatch):
    make_image(tmp_path / "a.png")
    make_image(Path(os.fsdecode(bytes(tmp_path) + b"/c\xffd.jpg")))
    monkeypatch.chdir(tmp_path)
    r = kvl("caption", "--json", *scripted.args(), stdin=b"a.png\nc\xffd.jpg\n")
    assert r.code == 0, r.err
    inputs = [json.loads(line)["input"] for line in r.out.splitlines()]
    assert len(inputs) == 2 and inputs[0] == "a.png" and inputs[1].startswith("c"), inputs
    r = kvl("caption", *scripted.args(), stdin=b"missing\xfe.png\n")
    assert r.code == 3 and "missing\\xfe.png: file not found" in r.err and "not an image" not in r.err, r.err


def test_an_image_on_stdin_is_still_an_image(kvl, scripted, images):
    r = kvl("caption", "--json", *scripted.args(), stdin=images["jpg"].read_bytes())
    assert r.code == 0 and json.loads(r.out)["input"] == "-", r.err


def test_a_stdin_that_cannot_be_read_is_one_line(tmp_path):
    target = tmp_path / "wo.txt"
    with target.open("wb") as write_only:
        proc = subprocess.run([sys.executable, "-m", "kvl_cli", "caption"], stdin=write_only, capture_output=True,
                              env=kvl_env(), cwd=REPO, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 3 and err.count("\n") == 1 and "stdin: cannot read it" in err, err
