"""The toy tokenizer: a byte-level BPE vocabulary with Kimi-VL's special tokens and chat template,
and the scripted chain of words that the scripted toy model answers with."""

from __future__ import annotations

from typing import Any

# Special tokens as in the real vocabulary (their ids differ: the toy vocabulary is small).
SPECIAL_TOKENS = [
    "[BOS]", "[EOS]", "<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|im_system|>",
    "<|im_middle|>", "<|media_start|>", "<|media_content|>", "<|media_end|>", "<|media_pad|>",
    "[PAD]", "[UNK]",
]

# A chat template with the same shape as Kimi-VL's: llama.cpp recognises it as kimi-k2.
KIMI_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and messages[0]['role'] != 'system' -%}"
    "<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}<|im_system|>{%- endif -%}"
    "{%- if message['role'] == 'user' -%}<|im_user|>{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}<|im_assistant|>{%- endif -%}"
    "{{- message['role'] -}}<|im_middle|>{{- message['content'] + '<|im_end|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}"
)

# The scripted chain: each token's successor. Markers are split over pieces as in the real model
# ("◁/" + "think▷"); the last byte of "▷" (0xB7) leads to the answer too, because a prompt that
# ends with a prefilled "◁/think▷" (``--no-think``, a thinking budget) is tokenized into bytes.
SCRIPT_WORDS = ["◁think▷", " some", " thought", "◁/", "think▷", "An", " answer"]
SCRIPT_CHAIN: list[tuple[str | bytes, str | bytes]] = [
    ("<|im_middle|>", "◁think▷"),
    ("◁think▷", " some"),
    (" some", " thought"),
    (" thought", "◁/"),
    ("◁/", "think▷"),
    ("think▷", "An"),
    (b"\xb7", "An"),
    ("An", " answer"),
    (" answer", b"."),
    (b".", "<|im_end|>"),
]
SCRIPTED_THINKING = "some thought"
SCRIPTED_ANSWER = "An answer."


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte-to-character map, used by llama.cpp's BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


BYTE_CHARS = _bytes_to_unicode()


def encode_word(word: str | bytes) -> str:
    raw = word if isinstance(word, bytes) else word.encode("utf-8")
    return "".join(BYTE_CHARS[b] for b in raw)


def toy_vocab() -> tuple[list[str], list[int], list[str]]:
    """Tokens (byte-level encoded), token types and merges of the toy vocabulary."""
    tokens = [BYTE_CHARS[b] for b in range(256)]
    types = [1] * 256
    for word in SCRIPT_WORDS:
        tokens.append(encode_word(word))
        types.append(1)
    for special in SPECIAL_TOKENS:
        tokens.append(special)
        types.append(3)  # CONTROL
    # A few merges so that the BPE path is exercised on prompt text ("the", " the").
    merges = [f"{BYTE_CHARS[ord('t')]} {BYTE_CHARS[ord('h')]}", f"th {BYTE_CHARS[ord('e')]}"]
    tokens += ["th", "the"]
    types += [1, 1]
    return tokens, types, merges


def token_id(tokens: list[str], word: str | bytes) -> int:
    if isinstance(word, str) and word in SPECIAL_TOKENS:
        return tokens.index(word)
    return tokens.index(encode_word(word))


def tokenizer_metadata(tokens: list[str], types: list[int], merges: list[str]) -> list[tuple[str, Any]]:
    """The tokenizer's keys, in the order both text-model writers put them."""
    return [
        ("tokenizer.ggml.model", "gpt2"),
        ("tokenizer.ggml.pre", "kimi-k2"),
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.token_type", types),
        ("tokenizer.ggml.merges", merges),
        ("tokenizer.ggml.bos_token_id", tokens.index("[BOS]")),
        ("tokenizer.ggml.eos_token_id", tokens.index("<|im_end|>")),
        ("tokenizer.ggml.padding_token_id", tokens.index("[PAD]")),
        ("tokenizer.ggml.add_bos_token", False),
        ("tokenizer.chat_template", KIMI_CHAT_TEMPLATE),
    ]
