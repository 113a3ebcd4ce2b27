"""``--schema`` and ``--choices``: a JSON answer after a free thinking.

The schema (a file or inline JSON Schema) is checked when the command starts; llama.cpp's
JSON-schema-to-grammar turns it into GBNF, which the engine applies to the answer only, from the
moment the thinking closes. The finished answer is parsed and validated (``jsonschema``) before
anything is printed: an answer cut short (``--max-tokens``, the context) or one that does not
validate is an error for that input, never half a document on stdout.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .engine.reasoning import Section
from .engine.types import Event, FinishReason, Result, TextEvent
from .errors import ContextError, ExitCode, KvlError, UsageError


class AnswerError(KvlError):
    """The answer is not a complete document that validates: that input failed (exit 5)."""

    exit_code = ExitCode.PARTIAL


@dataclass(frozen=True)
class AnswerSchema:
    schema: dict[str, Any]
    choices: tuple[str, ...] = ()  # --choices: the bare choice is printed, not a JSON string

    def grammar(self) -> str:
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        try:
            gbnf = str(json_schema_to_gbnf(json.dumps(self.schema)))
        except Exception as exc:  # the converter raises plain exceptions for what it does not support
            raise UsageError(f"--schema: cannot turn this schema into a grammar ({exc})",
                             hint="use the JSON Schema subset llama.cpp supports (no remote $ref)") from None
        # llama-cpp-python's port lets raw control characters into strings, which JSON forbids
        # (llama.cpp's own converter excludes them): the same rule as llama.cpp's
        return gbnf.replace('char ::= [^"\\\\] |', 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |')

    def parse(self, result: Result) -> Any:
        """The answer as data, or AnswerError saying why there is none."""
        if result.finish_reason is FinishReason.CONTEXT:
            raise ContextError("the context (--ctx) filled up before the answer's JSON was complete",
                               hint="raise --ctx, or lower --think-budget or --image-max-tokens")
        if result.finish_reason is FinishReason.LENGTH:
            raise AnswerError("the answer was cut by --max-tokens before its JSON was complete",
                              hint="raise --max-tokens, or lower --think-budget")
        try:
            data = json.loads(result.answer)
        except ValueError as exc:
            raise AnswerError(f"the answer is not JSON ({exc})", hint="try again, or simplify the schema") from None
        import jsonschema

        try:
            jsonschema.validate(data, self.schema)
        except jsonschema.ValidationError as exc:
            raise AnswerError(f"the answer does not follow the schema: {exc.message}",
                              hint="try again, or simplify the schema") from None
        return data

    def text(self, data: Any) -> str:
        """What stdout carries in a pipe: the JSON document (a bare choice with --choices)."""
        if self.choices and isinstance(data, str):
            return data
        return json.dumps(data, ensure_ascii=False)


def load_schema(value: str) -> AnswerSchema:
    """``--schema FILE|JSON``: checked now (exit 2 with the schema error)."""
    text = value
    if not value.lstrip().startswith(("{", "[", "true", "false")):
        path = Path(value).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--schema {value}: cannot read it ({exc})",
                             hint="give a JSON Schema file, or the schema itself as JSON") from None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--schema: not JSON ({exc})", hint="give a JSON Schema file or inline JSON") from None
    return checked(schema)


def choices_schema(value: str) -> AnswerSchema:
    """``--choices a,b,c``: the answer is one of them."""
    options = tuple(dict.fromkeys(c.strip() for c in value.split(",") if c.strip()))
    if len(options) < 2:
        raise UsageError(f"--choices {value!r}: give at least two choices", hint="e.g. --choices yes,no")
    return AnswerSchema({"enum": list(options)}, options)


def checked(schema: Any) -> AnswerSchema:
    import jsonschema

    if not isinstance(schema, dict):
        raise UsageError("--schema: a JSON Schema is an object", hint='e.g. {"type": "object", "properties": {…}}')
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise UsageError(f"--schema: not a valid JSON Schema: {exc.message}", hint="fix the schema") from None
    answer = AnswerSchema(schema)
    answer.grammar()  # a schema the converter cannot handle is a usage error now, not after the model loads
    return answer


class AnswerGate:
    """Holds back a constrained answer's text until the finished answer validates; then it goes out
    whole (the JSON document, or the bare choice) and the parsed value joins the record as ``data``."""

    def __init__(self, schema: AnswerSchema | None) -> None:
        self.schema = schema

    def passes(self, ev: Event) -> bool:
        return self.schema is None or not (isinstance(ev, TextEvent) and ev.section is Section.ANSWER)

    def check(self, result: Result) -> tuple[Result, TextEvent | None, dict[str, Any]]:
        """(the result to write, the answer text to stream now, extra record fields); raises
        AnswerError. Without a schema, everything passes as it is."""
        if self.schema is None:
            return result, None, {}
        data = self.schema.parse(result)
        text = self.schema.text(data)
        return replace(result, answer=text), TextEvent(Section.ANSWER, text), {"data": data}

    def release(self, result: Result, show: Callable[[Event], None]) -> tuple[Result, dict[str, Any]]:
        """A finished answer checked, then its text shown through ``show`` (at once, whole): the result
        to write and its extra record fields. An interrupted answer passes as it is. Raises AnswerError."""
        if result.interrupted:
            return result, {}
        result, answer, extra = self.check(result)
        if answer is not None:
            show(answer)
        return result, extra
