"""Constrained answers through llguidance: after the thinking, every answer token is sampled under
the token mask of the answer's JSON Schema or grammar.

llguidance (the constrained-decoding engine of llama.cpp's LLGUIDANCE build, vLLM and SGLang)
compiles a JSON Schema (every keyword it implements: ranges, ``pattern``, lengths, item counts,
``$ref``, ``anyOf``/``oneOf``, ``enum``/``const``, ``format``) or a GBNF/Lark grammar, and computes
which tokens of the model's vocabulary may come next in tens of microseconds. Its tokenizer is built
once per model from llama.cpp's vocabulary (under a second for 163,840 tokens) and kept.

A token is sampled as usual first and checked against the mask (one bit); only when the mask refuses
it is the token drawn again by the same sampler chain, from the allowed candidates alone (when few
are allowed: a digit, a bracket) or from the whole vocabulary with the refused logits at -inf. For
plain sampling that draws from exactly the masked distribution: a refused first draw falls back on
the others in proportion.

A schema is compiled when the command starts (without a model: llguidance needs no tokenizer to
check it), so a keyword it cannot honour is a usage error before anything loads.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EngineError, UsageError
from ..safetext import escape_controls
from .llama_handles import Context, Model, Sampler
from .types import Constraint, ConstraintKind, GenerationSettings

# Compact JSON (``{"a":1,"b":[2,3]}``): llguidance lets whitespace run free by default, and a weak
# model's answer then runs to the token limit in tabs and newlines.
JSON_OPTIONS: Any = {"whitespace_flexible": False}
# A number without a bound may be written with any exponent (1e999 reads as Infinity, which JSON
# lacks) or digits without end; bounded, llguidance writes it in plain digits.
NUMBER_BOUND = 10**15
INT64 = 2**63 - 1  # llguidance reads no larger number
# The answer steers to finish in its last max(STEER_MIN, 10%) tokens of --max-tokens (``steer``).
STEER_MIN = 24
# A grammar's alternatives in one rule (llguidance's default is 2000: ``root ::= "w0" | ... | "w2000"``).
MAX_ALTERNATIVES = 50_000
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_ONE = ("additionalProperties", "items", "not", "if", "then", "else", "contains", "propertyNames",
                  "unevaluatedProperties", "unevaluatedItems", "additionalItems")


class ConstraintError(UsageError):
    """llguidance cannot compile the schema or grammar (exit 2; ``kvl serve``: 400)."""


def kvl_schema(schema: Any) -> Any:
    """The schema as kvl constrains it (the answer is still validated against the schema as given):
    an object with ``properties`` and no ``additionalProperties`` takes no other property (what
    llama.cpp's converter did, and what a person writing the properties means), a number without a
    bound gets ±10^15 (see ``NUMBER_BOUND``), and "any JSON" (``{}``, ``true``, an object or array
    whose members are not described) is any JSON whose numbers are bounded so."""
    out = _kvl(schema)
    if _ANY_NAME in json.dumps(out):
        out = {**out, "$defs": {**out.get("$defs", {}), _ANY_NAME: _any_json()}}
    return out


_ANY_NAME = "kvl-any-json"
_ANY_REF = {"$ref": f"#/$defs/{_ANY_NAME}"}
_ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly",
                "$schema", "$id"}


def _any_json() -> dict[str, Any]:
    return {"anyOf": [{"type": "null"}, {"type": "boolean"}, _bounded({"type": "number"}), {"type": "string"},
                      {"type": "array", "items": _ANY_REF}, {"type": "object", "additionalProperties": _ANY_REF}]}


def _kvl(schema: Any) -> Any:
    if schema is True or (isinstance(schema, dict) and not set(schema) - _ANNOTATIONS):
        return {**(schema if isinstance(schema, dict) else {}), **_ANY_REF}
    if isinstance(schema, list):
        return [_kvl(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: _kvl(v) for k, v in out[key].items()}
    for key in (*_SUBSCHEMA_LISTS, *_SUBSCHEMA_ONE):
        if key in out:
            out[key] = _kvl(out[key])
    return _bounded(_members(out))


def _members(out: dict[str, Any]) -> dict[str, Any]:
    """An object's other properties closed, or any JSON when none is described; an array's items too."""
    closed = "additionalProperties" in out or "unevaluatedProperties" in out
    if "properties" in out and not closed:
        out["additionalProperties"] = False
    elif out.get("type") == "object" and not closed and "patternProperties" not in out:
        out["additionalProperties"] = _ANY_REF
    if out.get("type") == "array" and "items" not in out and "prefixItems" not in out:
        out["items"] = _ANY_REF
    return out


def _bounded(schema: dict[str, Any]) -> dict[str, Any]:
    types = schema.get("type")
    kinds = set(types) if isinstance(types, list) else {types}
    if not kinds & {"number", "integer"}:
        return schema
    bound: float = NUMBER_BOUND if kinds & {"number", "integer"} == {"integer"} else float(NUMBER_BOUND)
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    top = INT64 if isinstance(bound, int) else float("inf")
    if low is None:  # beyond the bound, the other side is 100 times the given one (1e16: up to 1e18)
        schema["minimum"] = max(high * 100, -top) if isinstance(high, (int, float)) and high <= -bound else -bound
    if high is None:
        schema["maximum"] = min(low * 100, top) if isinstance(low, (int, float)) and low >= bound else bound
    return schema


def _limits() -> Any:
    """llguidance's parser limits: errors without its multi-KB parser-state dump."""
    from llguidance import LLParserLimits

    return LLParserLimits(verbose_errors=False, max_items_in_row=MAX_ALTERNATIVES)


def compile_constraint(constraint: Constraint) -> str:
    """llguidance's grammar for ``constraint``, checked; ConstraintError saying what it cannot honour."""
    return _compiled(constraint.kind, constraint.text)


@functools.lru_cache(maxsize=64)
def _compiled(kind: ConstraintKind, text: str) -> str:
    from llguidance import LLMatcher

    if kind is ConstraintKind.JSON_SCHEMA:
        schema = kvl_schema(json.loads(text))
        _counted_keys_unique(schema)
        try:
            grammar = LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except (ValueError, TypeError, OverflowError) as exc:  # a number beyond 64 bits: "not JSON serializable"
            raise ConstraintError(f"llguidance cannot read it: {_one_line(str(exc))}",
                                  hint="keep the schema's numbers within ±9223372036854775807") from None
    else:
        grammar = LLMatcher.grammar_from_lark(_lark(text))
    problem = LLMatcher.validate_grammar(grammar, None, limits=_limits())
    if problem:
        hint = "keep number bounds within about ±1e19" if "float range" in problem else _hint(kind)
        raise ConstraintError(f"llguidance cannot honour it: {_one_line(problem)}", hint=hint)
    _probe(grammar, kind)
    return str(grammar)


def _counted_keys_unique(schema: Any) -> None:
    """llguidance does not keep the keys that ``patternProperties``/``additionalProperties`` admit
    unique (``{"x4":1,"x4":1}``): where ``minProperties`` counts on more keys than are required, the
    parsed answer (one key per name) could fall short of it. Such a schema is refused."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack += node
        if not isinstance(node, dict):
            continue
        stack += node.values()
        least = node.get("minProperties")
        required = node["required"] if isinstance(node.get("required"), list) else []
        open_keys = "patternProperties" in node or node.get("additionalProperties", True) is not False
        if isinstance(least, (int, float)) and least > len(set(required)) and open_keys:
            raise ConstraintError("llguidance cannot honour it: minProperties with patternProperties or "
                                  "additionalProperties (it may write one key twice, and the count falls short)",
                                  hint="name the keys in properties and required, or drop minProperties")


def _probe(grammar: str, kind: ConstraintKind) -> None:
    """Start an answer under ``grammar`` on a byte tokenizer, as far as it is forced (no choice yet):
    a rule or ``$ref`` that only refers to itself (``root ::= root``, ``{"$ref": "#"}``, a required
    property that is the schema again) or a forced run too long for llguidance fails here, before
    any model loads, instead of after the prompt ran."""
    from llguidance import LLMatcher

    matcher = LLMatcher(_byte_tokenizer(), grammar, log_level=0, limits=_limits())
    for _ in range(16):
        if matcher.is_error() or matcher.is_accepting():
            break
        forced = matcher.compute_ff_tokens()
        if matcher.is_error():
            break
        if not forced:
            matcher.compute_bitmask()  # the first choice: llguidance finds an endless rule here
            break
        matcher.consume_tokens(forced)
    if matcher.is_error():
        problem = _one_line(matcher.get_error().replace("<non-verbose/>", ""))
        if "NoExtensionBias" in problem:
            problem = f"no answer can be finished under it (a rule or $ref that only refers to itself?) ({problem})"
        elif "Too many items" in problem:
            problem = ("it forces a run longer than llguidance can follow (a long repetition, a required "
                       f"self-reference?) ({problem})")
        raise ConstraintError(f"llguidance cannot honour it: {problem}", hint=_hint(kind))


@functools.lru_cache(maxsize=1)
def _byte_tokenizer() -> Any:
    """A tokenizer of the 256 bytes (and an end token): enough to start a matcher without a model."""
    from llguidance import LLTokenizer
    from llguidance._tokenizer import TokenizerWrapper

    class Bytes:
        eos_token_id = 256
        bos_token_id = None
        tokens = [bytes([b]) for b in range(256)] + [b"\xff<end>"]

        def __call__(self, data: bytes) -> list[int]:
            return list(data)

    return LLTokenizer(TokenizerWrapper(Bytes()))


def _lark(text: str) -> str:
    """GBNF (llama.cpp's grammar format, root rule ``root``) as llguidance's Lark; Lark as it is."""
    from llguidance.gbnf_to_lark import any_to_lark, is_lark_syntax

    try:
        return str(any_to_lark(text if is_lark_syntax(text) else _unicode_escapes(text)))
    except Exception as exc:  # its converter raises its own error (and plain ones) for a grammar it cannot parse
        raise ConstraintError(f"not a grammar llguidance can read: {_one_line(str(exc))}",
                              hint=_hint(ConstraintKind.GRAMMAR)) from None


def _unicode_escapes(gbnf: str) -> str:
    r"""GBNF's ``\uXXXX``/``\UXXXXXXXX`` as the character itself (``\xHH`` below 0x80): llguidance's
    converter strips their leading zeros (``\u00e0`` -> ``\ue0``, which its Lark refuses)."""
    def one(m: re.Match[str]) -> str:
        digits = m.group(1) or m.group(2)
        if digits is None:
            return m.group(0)
        code = int(digits, 16)
        if code < 0x80:
            return f"\\x{code:02x}"
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            return m.group(0)
        return chr(code)

    return re.sub(r"\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|.)", one, gbnf, flags=re.S)


def _one_line(text: str) -> str:
    return escape_controls(" ".join(text.split()))[:300]


def _hint(kind: ConstraintKind) -> str:
    if kind is ConstraintKind.JSON_SCHEMA:
        return "remove or rewrite that keyword (kvl honours every keyword llguidance implements; see docs/options.md)"
    return "fix the grammar (GBNF with a root rule, or Lark with start)"


# ---- the tokenizer, once per model ---------------------------------------------------------------

_TOKENIZERS: dict[tuple[Path, int], tuple[Any, Closers]] = {}
_TOKENIZERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Closers:
    """The tokens that close what an answer has open (see ``ConstrainedSampler.steer``): inside a
    string, those that are a quote then only ``]``/``}``; outside, those that are only ``]``/``}``."""

    quote: Any  # numpy array of token ids
    bracket: Any

    @staticmethod
    def of(pieces: list[bytes]) -> Closers:
        import numpy as np

        quote = [t for t, p in enumerate(pieces) if re.fullmatch(rb'"[\]}]*', p)]
        bracket = [t for t, p in enumerate(pieces) if re.fullmatch(rb"[\]}]+", p)]
        return Closers(np.array(quote, dtype=np.int64), np.array(bracket, dtype=np.int64))


def tokenizer_for(model: Model, end_token: int) -> Any:
    """llguidance's tokenizer of ``model``'s vocabulary (built once per model file: about a second
    for the full vocabulary); ``end_token`` ends a finished answer."""
    return _tokenizer_and_closers(model, end_token)[0]


def _tokenizer_and_closers(model: Model, end_token: int) -> tuple[Any, Closers]:
    key = (Path(model.path), end_token)
    with _TOKENIZERS_LOCK:
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = _build_tokenizer(model, end_token)
        return _TOKENIZERS[key]


def _build_tokenizer(model: Model, end_token: int) -> tuple[Any, Closers]:
    """``llguidance.llamacpp.lltokenizer_from_vocab``, without its deprecated per-token call (a warning
    object per token): every token's bytes, a control token marked with 0xFF so that no answer spells it."""
    import ctypes

    from llguidance import LLTokenizer

    from . import native

    llama = native.llama()
    control = llama.LLAMA_TOKEN_ATTR_CONTROL
    user = llama.LLAMA_TOKEN_ATTR_USER_DEFINED
    tokens: list[bytes] = []
    for token in range(model.n_vocab):
        piece = model.piece(token, special=True)
        attr = llama.llama_vocab_get_attr(model.vocab, token)
        if attr & control or (attr & user and piece.startswith(b"<") and piece.endswith(b">")):
            piece = b"\xff" + piece
        tokens.append(piece)
    tokenize = ctypes.cast(llama.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    tokenizer = LLTokenizer.from_llamacpp(tokens=tokens, vocab_ptr=model.vocab, tokenize_fptr=tokenize,  # type: ignore[attr-defined]
                                          eos_token=[end_token], slices=None)
    return tokenizer, Closers.of(tokens)


# ---- sampling --------------------------------------------------------------------------------------


class ConstrainedSampler:
    """The answer's sampler chain under ``constraint`` (see the module's note on speed)."""

    def __init__(self, settings: GenerationSettings, model: Model, constraint: Constraint, end_token: int) -> None:
        import numpy as np
        from llguidance import LLMatcher

        tokenizer, self.closers = _tokenizer_and_closers(model, end_token)
        self.matcher = LLMatcher(tokenizer, compile_constraint(constraint), log_level=0, limits=_limits())
        if self.matcher.is_error():
            raise ConstraintError(f"llguidance cannot use it: {_one_line(self.matcher.get_error())}",
                                  hint=_hint(constraint.kind))
        self.end_token = end_token
        self.n_vocab = model.n_vocab
        self.mask = np.zeros((self.n_vocab + 31) // 32, dtype=np.int32)
        self.chain = Sampler(settings)
        self.refused = 0  # tokens the mask refused, sampled again under it
        self.model = model
        self.left: int | None = None  # answer tokens left under --max-tokens (the sequence sets it)
        self.margin: int | None = None  # steer to finish once ``left`` is this low (see ``steer``)
        self.in_string = False  # the answer so far ends inside a JSON string
        self.escaped = False

    def sample(self, ctx: Context, logits_index: int) -> int:
        if self.matcher.is_stopped():  # the answer is complete: only its end may follow
            return self.end_token
        self.fill_mask()
        if self.left is not None:
            self.margin = self.margin if self.margin is not None else max(STEER_MIN, self.left // 10)
            if self.left <= self.margin:
                steered = self.steer(ctx, logits_index)
                if steered is not None:
                    return steered
        token = self.chain.sample(ctx, logits_index)
        if not self.allows(token):
            self.refused += 1
            token = self.resample(ctx, logits_index)
            if not self.allows(token):
                raise EngineError("the answer's constraint allows no token here", hint="simplify the schema")
        self.consume(token)
        return token

    def steer(self, ctx: Context, logits_index: int) -> int | None:
        """The last tokens of --max-tokens: finish rather than run on. A complete answer ends now;
        otherwise the most likely allowed token that closes what is open (a string, then arrays and
        objects) is taken; None when none is allowed yet (a minLength, a required key: the mask leads)."""
        import numpy as np

        from . import native

        if self.matcher.is_accepting():
            return self.end_token
        ids = self.closers.quote if self.in_string else self.closers.bracket
        ids = np.array([t for t in ids.tolist() if self.allows(t)], dtype=np.int64)
        if not len(ids):
            return None
        logits = np.ctypeslib.as_array(native.llama().llama_get_logits_ith(ctx.ptr, logits_index),
                                       shape=(self.n_vocab,))
        token = int(ids[int(np.argmax(logits[ids]))])
        native.llama().llama_sampler_accept(self.chain.ptr, token)
        self.consume(token)
        return token

    def fill_mask(self) -> None:
        self.matcher.unsafe_compute_mask_ptr(self.mask.ctypes.data, self.mask.nbytes)
        if self.matcher.is_error():
            raise EngineError(f"llguidance failed: {_one_line(self.matcher.get_error())}", hint="simplify the schema")

    def allows(self, token: int) -> bool:
        return 0 <= token < self.n_vocab and bool((int(self.mask[token >> 5]) >> (token & 31)) & 1)

    def resample(self, ctx: Context, logits_index: int) -> int:
        """A token drawn again by the sampler chain from the allowed tokens only. Few allowed (a digit,
        a closing bracket): the chain runs on just those candidates; many (inside a string): the refused
        logits in llama.cpp's buffer go to -inf and the chain runs on the whole vocabulary."""
        import ctypes

        import numpy as np

        from . import native

        llama = native.llama()
        logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx.ptr, logits_index), shape=(self.n_vocab,))
        allowed = np.unpackbits(self.mask.view(np.uint8), bitorder="little")[:self.n_vocab].astype(bool)
        ids = np.flatnonzero(allowed)
        if len(ids) * 8 > self.n_vocab:
            logits[~allowed] = -np.inf
            return self.chain.sample(ctx, logits_index)
        cands = np.empty(len(ids), dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        cands["id"], cands["logit"], cands["p"] = ids, logits[ids], 0.0
        data = (llama.llama_token_data * len(ids)).from_buffer(cands)
        arr = llama.llama_token_data_array(data=data, size=len(ids), selected=-1, sorted=False)
        llama.llama_sampler_apply(self.chain.ptr, ctypes.byref(arr))
        token = int(data[arr.selected].id)
        llama.llama_sampler_accept(self.chain.ptr, token)
        return token

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise EngineError(f"llguidance refused a token it allowed: {_one_line(self.matcher.get_error())}")
        for byte in self.model.piece(token):  # where the answer stands: inside a JSON string or not
            if self.escaped:
                self.escaped = False
            elif self.in_string and byte == 0x5C:
                self.escaped = True
            elif byte == 0x22:
                self.in_string = not self.in_string

    def close(self) -> None:
        self.chain.close()
