"""Untrusted text made safe for a terminal: a model's output, file names, error messages.

A terminal acts on the control characters it is sent: ESC starts sequences that move the cursor,
recolour, retitle the window or (on some terminals) write files; C1 codes such as U+009B do the
same on a UTF-8 terminal; bidirectional overrides make text display in another order than it
reads. So an image whose text holds an escape sequence could rewrite the user's terminal through
``kvl ocr``. On a terminal those characters are shown escaped, the way Python writes them
(``\\x1b``, ``\\u202e``); in a pipe the answer stays byte-exact. File names from a listing and the
invalid bytes of a non-UTF-8 name (kept by Python as lone surrogates) get the same treatment.
"""

from __future__ import annotations

import re

# C0 controls but \t and \n; a \r that does not end a line; DEL and C1; bidi embeddings, overrides
# and isolates; lone surrogates (a name's undecodable bytes)
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]|\r(?!\n)")
_UNSAFE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
# in JSON strings: what json.dumps leaves raw and a terminal would act on (or cannot encode), and
# the line and paragraph separators that some line readers split on (Python's str.splitlines)
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte it could not decode
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every unsafe character escaped; newlines, tabs and line-ending \\r\\n kept."""
    return _UNSAFE.sub(_escape, text)


def one_line(text: str) -> str:
    """``text`` escaped to one line (newlines and tabs too): for names and error messages."""
    return _UNSAFE_LINE.sub(_escape, text)


def json_safe(encoded: str) -> str:
    """A ``json.dumps(..., ensure_ascii=False)`` result with DEL, C1, line separators, bidi controls
    and lone surrogates as ``\\uXXXX`` escapes: the same JSON value, one line, safe on a terminal and
    encodable."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)
