"""Write GGUF pairs with Kimi-VL's exact architecture (deepseek2 text + kimivl projector).

No machine in this project reaches the hub, so tests and benchmarks use models written here:

* ``scripted`` toy pair: attention-output and FFN-down weights are zero, so the residual stream
  is the token embedding and greedy decoding follows a fixed chain of single-token words. Its
  output is known: thinking ``some thought``, answer ``An answer.`` The image still goes through
  the whole vision tower and projector.
* ``random`` toy pair: every weight random; it produces arbitrary tokens (for length limits).
* ``full`` size (benchmarks only): real dimensions, random quantized blocks.

Modules: ``vocab`` (the toy tokenizer and the scripted chain), ``dims`` (shapes), ``writer``
(typed GGUF metadata), ``toy`` (toy pairs), ``streamed`` and ``full`` (the full-size pair).
Needs the ``gguf`` package (the ``test`` extra).
"""

from __future__ import annotations

from dataclasses import replace

from .dims import FULL_TEXT, FULL_VISION, TextDims, VisionDims
from .full import write_full_pair, write_full_projector, write_full_text_model
from .toy import write_projector, write_text_model, write_toy_pair
from .vocab import (
    BYTE_CHARS,
    KIMI_CHAT_TEMPLATE,
    SCRIPT_CHAIN,
    SCRIPT_WORDS,
    SCRIPTED_ANSWER,
    SCRIPTED_THINKING,
    SPECIAL_TOKENS,
    toy_vocab,
)

__all__ = [
    "BYTE_CHARS", "FULL_TEXT", "FULL_VISION", "KIMI_CHAT_TEMPLATE", "SCRIPTED_ANSWER", "SCRIPTED_THINKING",
    "SCRIPT_CHAIN", "SCRIPT_WORDS", "SPECIAL_TOKENS", "TextDims", "VisionDims", "replace", "toy_vocab",
    "write_full_pair", "write_full_projector", "write_full_text_model", "write_projector", "write_text_model",
    "write_toy_pair",
]
