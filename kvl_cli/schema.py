"""``--schema`` and ``--choices``: a JSON answer after a free thinking.

The schema (a file or inline JSON Schema) is checked when the command starts, and compiled by
llguidance (``engine.constraint``: every keyword it implements is honoured), which the engine applies
to the answer only, from the moment the thinking closes. The finished answer is parsed and validated
(``jsonschema``) before anything is printed: an answer cut short (``--max-tokens``, the context) or
one that does not validate is an error for that input, never half a document on stdout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .engine.constraint import ConstraintError, compile_constraint
from .engine.reasoning import Section
from .engine.types import Constraint, ConstraintKind, Event, FinishReason, Result, TextEvent
from .errors import ContextError, ExitCode, InputError, KvlError, UsageError
from .limits import read_file


class AnswerError(KvlError):
    """The answer is not a complete document that validates: that input failed (exit 5)."""

    exit_code = ExitCode.PARTIAL


@dataclass(frozen=True)
class AnswerSchema:
    schema: dict[str, Any]
    choices: tuple[str, ...] = ()  # --choices: the bare choice is printed, not a JSON string

    def constraint(self) -> Constraint:
        """What the engine constrains the answer with (checked by ``checked``)."""
        return Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(self.schema, ensure_ascii=False, allow_nan=False))

    def parse(self, result: Result) -> Any:
        """The answer as data, or AnswerError saying why there is none."""
        if result.finish_reason is FinishReason.CONTEXT:
            raise ContextError("the context (--ctx) filled up before the answer's JSON was complete",
                               hint="raise --ctx, or lower --think-budget or --image-max-tokens")
        if result.finish_reason is FinishReason.LENGTH:
            raise AnswerError("the answer was cut by --max-tokens before its JSON was complete",
                              hint="raise --max-tokens, or lower --think-budget")
        try:
            data = json.loads(result.answer, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise AnswerError(f"the answer is not JSON ({exc})", hint="try again, or simplify the schema") from None
        if not finite(data):
            raise AnswerError("the answer holds a number too large for JSON (it would read as Infinity)",
                              hint="try again, or bound the number in the schema (maximum)")
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
        return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))  # compact, as served


def finite(value: Any) -> bool:
    """No number in ``value`` is infinite or NaN (JSON has neither)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            stack += item.values()
        elif isinstance(item, list):
            stack += item
    return True


def load_schema(value: str) -> AnswerSchema:
    """``--schema FILE|JSON``: checked now (exit 2 with the schema error). A file is read within
    ``KVL_MAX_INPUT_BYTES`` like any input (``--schema /dev/zero`` is refused, not read forever)."""
    text = value
    if _is_file(value) or not value.lstrip().startswith(("{", "[", "true", "false")):  # a file wins
        label = f"--schema {value}"
        try:
            text = read_file(Path(value).expanduser(), label).decode("utf-8")
        except InputError as exc:
            reason = exc.message.removeprefix(f"{label}: ")
            raise UsageError(f"{label}: cannot read it ({reason})", hint=exc.hint) from None
        except UnicodeDecodeError:
            raise UsageError(f"--schema {value}: not a text file (it is not UTF-8)",
                             hint="give a JSON Schema file, or the schema itself as JSON") from None
    try:
        schema = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise UsageError(f"--schema: not JSON ({exc})", hint="give a JSON Schema file or inline JSON") from None
    except RecursionError:
        raise UsageError("--schema: nested too deep", hint="simplify the schema") from None
    return checked(schema)


def _is_file(value: str) -> bool:
    try:
        return Path(value).expanduser().is_file()
    except (OSError, ValueError):  # a name too long, a NUL: inline JSON, then
        return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def choices_schema(value: str) -> AnswerSchema:
    """``--choices a,b,c``: the answer is one of them, each a literal string (quotes, backslashes and
    all); ``\\,`` is a comma inside a choice (``--choices 'yes\\, sure,no'``)."""
    pieces = [c.replace("\0", ",").strip() for c in value.replace("\\,", "\0").split(",")]
    options = tuple(dict.fromkeys(c for c in pieces if c))
    if len(options) < 2:
        raise UsageError(f"--choices {value!r}: give at least two choices", hint="e.g. --choices yes,no")
    return AnswerSchema({"enum": list(options)}, options)


def checked(schema: Any) -> AnswerSchema:
    import jsonschema

    if schema is True:  # the JSON Schema that any JSON follows, as {} is
        schema = {}
    if schema is False:
        raise UsageError("--schema: false: no answer follows it", hint="give true or {} for any JSON")
    if not isinstance(schema, dict):
        raise UsageError("--schema: a JSON Schema is an object (or true)",
                         hint='e.g. {"type": "object", "properties": {…}}')
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
        answer = AnswerSchema(schema)
        compile_constraint(answer.constraint())  # a keyword llguidance cannot honour: exit 2 now, before any load
    except jsonschema.SchemaError as exc:
        raise UsageError(f"--schema: not a valid JSON Schema: {exc.message}", hint="fix the schema") from None
    except ConstraintError as exc:
        raise UsageError(f"--schema: {exc.message}", hint=exc.hint) from None
    except RecursionError:
        raise UsageError("--schema: nested too deep", hint="simplify the schema") from None
    return answer


class AnswerGate:
    """Holds back a constrained answer's text until the finished answer validates; then it goes out
    whole (the JSON document, or the bare choice) and the parsed value joins the record as ``data``."""

    def __init__(self, schema: AnswerSchema | None) -> None:
        self.schema = schema

    def passes(self, ev: Event) -> bool:
        return self.schema is None or not (isinstance(ev, TextEvent) and ev.section is Section.ANSWER)

    def check(self, result: Result, label: str = "",
              page: int | None = None) -> tuple[Result, TextEvent | None, dict[str, Any]]:
        """(the result to write, the answer text to stream now, extra record fields) of input ``label``
        (of its page ``page``, for a document); raises AnswerError. Without a schema, everything passes
        as it is."""
        if self.schema is None:
            return result, None, {}
        data = self.schema.parse(result)
        text = self.schema.text(data)
        return replace(result, answer=text), TextEvent(Section.ANSWER, text), {"data": data}

    def release(self, result: Result, show: Callable[[Event], None],
                label: str = "", page: int | None = None) -> tuple[Result, dict[str, Any]]:
        """A finished answer checked, then its text shown through ``show`` (at once, whole): the result
        to write and its extra record fields. An interrupted answer passes as it is. Raises AnswerError."""
        if result.interrupted:
            return result, {}
        result, answer, extra = self.check(result, label, page)
        if answer is not None:
            show(answer)
        return result, extra
