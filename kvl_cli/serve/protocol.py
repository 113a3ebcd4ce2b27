"""A chat-completions request body, checked field by field, into what kvl runs.

The fields kvl reads are OpenAI's (``messages``, ``max_tokens``/``max_completion_tokens``,
``temperature``, ``top_p``, ``seed``, ``stop``, ``stream``, ``stream_options``, ``response_format``,
``reasoning_effort``) plus one extra field, ``kvl``, for what OpenAI's protocol has no word for
(``EXTENSIONS``). Fields that change nothing here (``user``, ``metadata``, penalties…) are ignored;
ones kvl cannot honour (``n`` > 1, ``tools``, ``logprobs``) are refused, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine.constraint import ConstraintError, compile_constraint
from ..engine.types import Constraint, ConstraintKind, GenerationSettings
from ..errors import UsageError
from ..pages import parse_pages
from ..schema import AnswerSchema, checked
from .errors import bad_request

# the extra field: {"kvl": {...}}
EXTENSIONS = {
    "think_budget": "end the thinking after N tokens (0: no thinking; null: unlimited)",
    "image_max_tokens": "most tokens per image for this request (at most the server's --image-max-tokens)",
    "top_k": "top-k sampling (0: off)",
    "min_p": "min-p sampling (0: off)",
    "grammar": "GBNF (or Lark) the answer (after the thinking) must follow, through llguidance; not with "
               "response_format",
    "progress": "stream: also send chunks with {'kvl': {'phase': ...}} (encode, prefill, generate)",
    "pages": "the pages of each PDF file part to read, like --pages (1-3,7); default: all",
    "password": "the password of encrypted PDF file parts (never logged or echoed)",
}
REASONING_EFFORT = {"none": 0, "minimal": 0, "low": 256, "medium": 1024, "high": None}
REFUSED = {"tools": "tools are not supported", "functions": "functions are not supported",
           "logprobs": "logprobs are not supported", "audio": "audio output is not supported"}


@dataclass
class ImagePart:
    url: str
    where: str  # the field, for error messages: messages[1].content[0]


@dataclass
class FilePart:
    """OpenAI's file content part: a document (a PDF) as a data URI; it becomes its pages."""

    data: str  # data:application/pdf;base64,...
    filename: str | None
    where: str


Part = str | ImagePart | FilePart


@dataclass
class Turn:
    role: str  # "user" or "assistant"
    parts: list[Part]


@dataclass
class Defaults:
    """What a request gets for a field it leaves out."""

    max_tokens: int = 8192
    temperature: float = 0.8  # Moonshot's recommendation for the Thinking model
    image_max_tokens: int = 1024


@dataclass
class ChatCall:
    model: str | None
    system: str | None
    turns: list[Turn]
    settings: GenerationSettings
    image_max_tokens: int
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    schema: AnswerSchema | None = None
    progress: bool = False
    pages: str | None = None  # kvl.pages: which pages of each PDF
    password: str | None = field(default=None, repr=False)  # kvl.password: never logged or echoed

    @property
    def images(self) -> list[ImagePart]:
        return [p for t in self.turns for p in t.parts if isinstance(p, ImagePart)]

    @property
    def media(self) -> list[ImagePart | FilePart]:
        """Every image and document part, in order."""
        return [p for t in self.turns for p in t.parts if isinstance(p, (ImagePart, FilePart))]


def parse_chat(body: Any, defaults: Defaults) -> ChatCall:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for name, why in REFUSED.items():
        if body.get(name) not in (None, False, [], {}):
            raise bad_request(f"{why} by kvl serve", param=name, code="unsupported_parameter")
    if _int(body, "n", 1, 1, 1 << 30) != 1:
        raise bad_request("n > 1 is not supported by kvl serve (one answer per request)", param="n",
                          code="unsupported_parameter")
    ext = body.get("kvl") or {}
    if not isinstance(ext, dict) or set(ext) - set(EXTENSIONS):
        raise bad_request(f"kvl: an object with some of {', '.join(EXTENSIONS)}", param="kvl")
    system, turns = _messages(body.get("messages"))
    schema = _response_format(body.get("response_format"))
    grammar = _opt(ext, "grammar", str, "kvl.grammar")
    if grammar is not None and schema is not None:
        raise bad_request("kvl.grammar and response_format do not go together", param="kvl.grammar")
    settings = _settings(body, ext, defaults)
    settings.constraint = _grammar(grammar) if schema is None else schema.constraint()
    image_max = _int(ext, "image_max_tokens", defaults.image_max_tokens, 8, defaults.image_max_tokens,
                     "kvl.image_max_tokens")
    return ChatCall(model=_opt(body, "model", str, "model"), system=system, turns=turns, settings=settings,
                    image_max_tokens=image_max, stream=bool(body.get("stream")), include_usage=_include_usage(body),
                    stop=_stop(body.get("stop")), schema=schema, progress=bool(ext.get("progress")),
                    pages=_pages(ext), password=_opt(ext, "password", str, "kvl.password") or None)


def _pages(ext: dict[str, Any]) -> str | None:
    spec = _opt(ext, "pages", str, "kvl.pages")
    if spec is not None:
        try:
            parse_pages(spec)
        except UsageError as exc:
            raise bad_request(f"kvl.pages: {exc}", param="kvl.pages") from None
    return spec  # type: ignore[no-any-return]


def _settings(body: dict[str, Any], ext: dict[str, Any], d: Defaults) -> GenerationSettings:
    most = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _int({"max_tokens": most}, "max_tokens", d.max_tokens, 1, 1 << 30)
    budget = _think_budget(body, ext)
    seed = _opt(body, "seed", int, "seed")
    if seed is not None and not 0 <= seed <= 2**32 - 2:
        raise bad_request("seed: between 0 and 4294967294", param="seed")
    return GenerationSettings(temperature=_float(body, "temperature", d.temperature, 0.0, 2.0),
                              top_p=_float(body, "top_p", 1.0, 0.0, 1.0),
                              top_k=_int(ext, "top_k", 0, 0, 1 << 20, "kvl.top_k"),
                              min_p=_float(ext, "min_p", 0.0, 0.0, 1.0, "kvl.min_p"),
                              seed=seed, max_tokens=max_tokens, think_budget=budget)


def _think_budget(body: dict[str, Any], ext: dict[str, Any]) -> int | None:
    if "think_budget" in ext:
        if ext["think_budget"] is None:
            return None
        return _int(ext, "think_budget", 0, 0, 1 << 30, "kvl.think_budget")
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in REASONING_EFFORT:
        raise bad_request(f"reasoning_effort: one of {', '.join(REASONING_EFFORT)}", param="reasoning_effort")
    return REASONING_EFFORT[effort]


def _messages(raw: Any) -> tuple[str | None, list[Turn]]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages: a non-empty list of messages", param="messages")
    systems: list[str] = []
    turns: list[Turn] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, dict) else None
        if role in ("system", "developer"):
            systems.append(_text_only(msg.get("content"), where))
        elif role in ("user", "assistant"):
            turns.append(Turn(role, _content(msg.get("content"), where, images=role == "user")))
        else:
            raise bad_request(f"{where}: role must be system, developer, user or assistant", param=f"{where}.role")
    if not turns or turns[-1].role != "user":
        raise bad_request("the last message must be the user's", param="messages")
    return ("\n\n".join(systems) if systems else None), turns


def _content(raw: Any, where: str, *, images: bool) -> list[Part]:
    if isinstance(raw, str):
        return [raw]
    if raw is None and not images:
        return [""]  # an assistant turn with no content (it had only reasoning)
    if not isinstance(raw, list):
        raise bad_request(f"{where}.content: a string or a list of parts", param=f"{where}.content")
    parts: list[Part] = []
    for j, part in enumerate(raw):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind == "image_url" and images:
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise bad_request(f"{at}.image_url.url: a string", param=f"{at}.image_url")
            parts.append(ImagePart(url, at))
        elif kind == "file" and images:
            parts.append(_file_part(part.get("file"), at))
        else:
            raise bad_request(f"{at}: a text part{' or an image_url or file part' if images else ''}", param=at)
    return parts


def _file_part(raw: Any, at: str) -> FilePart:
    """``{"type": "file", "file": {"file_data": "data:application/pdf;base64,...", "filename": "..."}}``."""
    data = raw.get("file_data") if isinstance(raw, dict) else None
    if not isinstance(data, str):
        why = "an uploaded file_id is not supported: send file_data" if isinstance(raw, dict) and raw.get("file_id") \
            else "file.file_data: a data: URI (data:application/pdf;base64,...)"
        raise bad_request(f"{at}: {why}", param=f"{at}.file", code="invalid_file")
    name = raw.get("filename")
    return FilePart(data, name if isinstance(name, str) else None, at)


def _text_only(raw: Any, where: str) -> str:
    parts = _content(raw, where, images=False)
    return "\n".join(p for p in parts if isinstance(p, str))


def _response_format(raw: Any) -> AnswerSchema | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return checked({"type": "object"})
    if kind != "json_schema":
        raise bad_request("response_format: type text, json_object or json_schema", param="response_format")
    spec = raw.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    try:
        return checked(schema)
    except UsageError as exc:
        message = str(exc).replace("--schema", "response_format.json_schema.schema")
        raise bad_request(message, param="response_format", code="invalid_schema") from None


def _grammar(text: str | None) -> Constraint | None:
    """``kvl.grammar``: GBNF or Lark, compiled by llguidance now (a 400 before the request waits its turn)."""
    if text is None:
        return None
    constraint = Constraint(ConstraintKind.GRAMMAR, text)
    try:
        compile_constraint(constraint)
    except ConstraintError as exc:
        raise bad_request(f"kvl.grammar: {exc.message}", param="kvl.grammar", code="invalid_grammar") from None
    return constraint


def _stop(raw: Any) -> list[str]:
    if raw is None:
        return []
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise bad_request("stop: a string or a list of up to 4 non-empty strings", param="stop")
    return list(stops)


def _include_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def _opt(obj: dict[str, Any], key: str, kind: type, param: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise bad_request(f"{param}: must be a {kind.__name__}", param=param)
    return value


def _int(obj: dict[str, Any], key: str, default: int, lo: int, hi: int, param: str | None = None) -> int:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_request(f"{param or key}: an integer from {lo} to {hi}", param=param or key)
    return value


def _float(obj: dict[str, Any], key: str, default: float, lo: float, hi: float, param: str | None = None) -> float:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise bad_request(f"{param or key}: a number from {lo:g} to {hi:g}", param=param or key)
    return float(value)
