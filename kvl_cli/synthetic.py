"""Write GGUF pairs with Kimi-VL's exact architecture (deepseek2 text + kimivl projector).

No machine in this project reaches the hub, so tests and benchmarks use models written here:

* ``scripted`` toy pair: attention-output and FFN-down weights are zero, so the residual stream
  is the token embedding and greedy decoding follows a fixed chain of single-token words. Its
  output is known: thinking ``some thought``, answer ``An answer.`` The image still goes through
  the whole vision tower and projector.
* ``random`` toy pair: every weight random; it produces arbitrary tokens (for length limits).
* ``full`` size (benchmarks only): real dimensions, random quantized blocks.

Needs the ``gguf`` package (the ``test`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

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


def _encode_word(word: str | bytes) -> str:
    raw = word if isinstance(word, bytes) else word.encode("utf-8")
    return "".join(BYTE_CHARS[b] for b in raw)


@dataclass(frozen=True)
class TextDims:
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 2
    n_ff: int = 128
    n_expert: int = 4
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ff_exp: int = 32
    kv_lora_rank: int = 32
    qk_nope: int = 16
    qk_rope: int = 16
    v_head: int = 16
    n_ctx_train: int = 8192
    n_vocab: int | None = None  # None: the toy vocabulary's size


@dataclass(frozen=True)
class VisionDims:
    n_embd: int = 32
    n_layer: int = 2
    n_head: int = 2
    n_ff: int = 64
    patch: int = 14
    pos_side: int = 8  # learned position table is pos_side x pos_side
    merge: int = 2


# Kimi-VL-A3B's real dimensions (kimi-vl-facts.md).
FULL_TEXT = TextDims(
    n_embd=2048, n_layer=27, n_head=16, n_ff=11264, n_expert=64, n_expert_used=6, n_expert_shared=2,
    n_ff_exp=1408, kv_lora_rank=512, qk_nope=128, qk_rope=64, v_head=128, n_ctx_train=131072,
    n_vocab=163840,
)
FULL_VISION = VisionDims(n_embd=1152, n_layer=27, n_head=16, n_ff=4304, patch=14, pos_side=64, merge=2)


def toy_vocab() -> tuple[list[str], list[int], list[str]]:
    """Tokens (byte-level encoded), token types and merges of the toy vocabulary."""
    tokens = [BYTE_CHARS[b] for b in range(256)]
    types = [1] * 256
    for word in SCRIPT_WORDS:
        tokens.append(_encode_word(word))
        types.append(1)
    for special in SPECIAL_TOKENS:
        tokens.append(special)
        types.append(3)  # CONTROL
    # A few merges so that the BPE path is exercised on prompt text ("the", " the").
    merges = [f"{BYTE_CHARS[ord('t')]} {BYTE_CHARS[ord('h')]}", f"th {BYTE_CHARS[ord('e')]}"]
    tokens += ["th", "the"]
    types += [1, 1]
    return tokens, types, merges


def _token_id(tokens: list[str], word: str | bytes) -> int:
    if isinstance(word, str) and word in SPECIAL_TOKENS:
        return tokens.index(word)
    return tokens.index(_encode_word(word))


def _writer(path: Path, arch: str):  # type: ignore[no-untyped-def]
    import gguf

    return gguf.GGUFWriter(str(path), arch)


def _finish(writer) -> None:  # type: ignore[no-untyped-def]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_text_model(path: str | Path, *, scripted: bool = True, dims: TextDims = TextDims(), seed: int = 0,
                     context_length: int | None = None) -> Path:
    """Write a toy deepseek2 text model. ``scripted`` makes greedy output follow SCRIPT_CHAIN."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, types, merges = toy_vocab()
    n_vocab = len(tokens)
    d = dims
    k_mla = d.qk_nope + d.qk_rope
    w = _writer(path, "deepseek2")
    a = "deepseek2"
    w.add_string("general.name", "kvl-toy-kimi-vl" + ("-scripted" if scripted else "-random"))
    w.add_uint32(f"{a}.context_length", context_length or d.n_ctx_train)
    w.add_uint32(f"{a}.embedding_length", d.n_embd)
    w.add_uint32(f"{a}.block_count", d.n_layer)
    w.add_uint32(f"{a}.feed_forward_length", d.n_ff)
    w.add_uint32(f"{a}.attention.head_count", d.n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", 1)
    w.add_float32(f"{a}.rope.freq_base", 800000.0)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32(f"{a}.expert_count", d.n_expert)
    w.add_uint32(f"{a}.expert_used_count", d.n_expert_used)
    w.add_uint32(f"{a}.leading_dense_block_count", 1)
    w.add_uint32(f"{a}.vocab_size", n_vocab)
    w.add_uint32(f"{a}.attention.q_lora_rank", 0)
    w.add_uint32(f"{a}.attention.kv_lora_rank", d.kv_lora_rank)
    w.add_uint32(f"{a}.attention.key_length", d.kv_lora_rank + d.qk_rope)
    w.add_uint32(f"{a}.attention.value_length", d.kv_lora_rank)
    w.add_uint32(f"{a}.attention.key_length_mla", k_mla)
    w.add_uint32(f"{a}.attention.value_length_mla", d.v_head)
    w.add_uint32(f"{a}.expert_feed_forward_length", d.n_ff_exp)
    w.add_uint32(f"{a}.expert_shared_count", d.n_expert_shared)
    w.add_float32(f"{a}.expert_weights_scale", 2.446)
    w.add_bool(f"{a}.expert_weights_norm", True)
    w.add_uint32(f"{a}.expert_gating_func", 2)  # sigmoid
    w.add_uint32(f"{a}.rope.dimension_count", d.qk_rope)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "kimi-k2")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", types)
    w.add_array("tokenizer.ggml.merges", merges)
    w.add_uint32("tokenizer.ggml.bos_token_id", tokens.index("[BOS]"))
    w.add_uint32("tokenizer.ggml.eos_token_id", tokens.index("<|im_end|>"))
    w.add_uint32("tokenizer.ggml.padding_token_id", tokens.index("[PAD]"))
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_string("tokenizer.chat_template", KIMI_CHAT_TEMPLATE)

    def rand(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def zeros_or_rand(*shape: int) -> np.ndarray:
        return np.zeros(shape, np.float32) if scripted else rand(*shape)

    ones = lambda n: np.ones(n, np.float32)  # noqa: E731

    if scripted:
        sources = [_token_id(tokens, src) for src, _ in SCRIPT_CHAIN]
        if len(sources) > d.n_embd:
            raise ValueError("n_embd too small for the scripted chain")
        # orthonormal embeddings for the chain's tokens: no cross-talk between their logits
        q, _ = np.linalg.qr(rng.standard_normal((d.n_embd, d.n_embd)))
        embd = rand(n_vocab, d.n_embd, scale=1.0)
        output = np.zeros((n_vocab, d.n_embd), np.float32)
        for i, (src, dst) in enumerate(SCRIPT_CHAIN):
            s, t = _token_id(tokens, src), _token_id(tokens, dst)
            embd[s] = q[i]
            output[t] += 10.0 * q[i]
    else:
        embd = rand(n_vocab, d.n_embd, scale=1.0)
        output = rand(n_vocab, d.n_embd, scale=0.5)
        # end-of-generation tokens get zero logits: under greedy decoding the random model never
        # stops by itself, so tests can rely on length limits and interrupt it
        for special in ("[EOS]", "<|im_end|>", "[PAD]"):
            output[tokens.index(special)] = 0.0

    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", ones(d.n_embd))
    w.add_tensor("output.weight", output)
    for i in range(d.n_layer):
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", ones(d.n_embd))
        w.add_tensor(f"{p}.attn_kv_a_norm.weight", ones(d.kv_lora_rank))
        w.add_tensor(f"{p}.attn_q.weight", rand(d.n_head * k_mla, d.n_embd))
        w.add_tensor(f"{p}.attn_kv_a_mqa.weight", rand(d.kv_lora_rank + d.qk_rope, d.n_embd))
        w.add_tensor(f"{p}.attn_k_b.weight", rand(d.n_head, d.kv_lora_rank, d.qk_nope))
        w.add_tensor(f"{p}.attn_v_b.weight", rand(d.n_head, d.v_head, d.kv_lora_rank))
        w.add_tensor(f"{p}.attn_output.weight", zeros_or_rand(d.n_embd, d.n_head * d.v_head))
        w.add_tensor(f"{p}.ffn_norm.weight", ones(d.n_embd))
        if i == 0:
            w.add_tensor(f"{p}.ffn_gate.weight", rand(d.n_ff, d.n_embd))
            w.add_tensor(f"{p}.ffn_up.weight", rand(d.n_ff, d.n_embd))
            w.add_tensor(f"{p}.ffn_down.weight", zeros_or_rand(d.n_embd, d.n_ff))
        else:
            n_sh = d.n_ff_exp * d.n_expert_shared
            w.add_tensor(f"{p}.ffn_gate_inp.weight", rand(d.n_expert, d.n_embd))
            w.add_tensor(f"{p}.exp_probs_b.bias", rand(d.n_expert))
            w.add_tensor(f"{p}.ffn_gate_exps.weight", rand(d.n_expert, d.n_ff_exp, d.n_embd))
            w.add_tensor(f"{p}.ffn_up_exps.weight", rand(d.n_expert, d.n_ff_exp, d.n_embd))
            w.add_tensor(f"{p}.ffn_down_exps.weight", zeros_or_rand(d.n_expert, d.n_embd, d.n_ff_exp))
            w.add_tensor(f"{p}.ffn_gate_shexp.weight", rand(n_sh, d.n_embd))
            w.add_tensor(f"{p}.ffn_up_shexp.weight", rand(n_sh, d.n_embd))
            w.add_tensor(f"{p}.ffn_down_shexp.weight", zeros_or_rand(d.n_embd, n_sh))
    _finish(w)
    return path


def write_projector(path: str | Path, *, text_n_embd: int = TextDims().n_embd, dims: VisionDims = VisionDims(),
                    seed: int = 1) -> Path:
    """Write a toy kimivl projector (MoonViT + patch merger) whose output width is ``text_n_embd``."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    d = dims
    w = _writer(path, "clip")
    w.add_string("general.name", "kvl-toy-kimi-vl-mmproj")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", "kimivl")
    w.add_bool("clip.use_gelu", True)
    v = "clip.vision"
    w.add_uint32(f"{v}.image_size", d.pos_side * d.patch)
    w.add_uint32(f"{v}.patch_size", d.patch)
    w.add_uint32(f"{v}.embedding_length", d.n_embd)
    w.add_uint32(f"{v}.feed_forward_length", d.n_ff)
    w.add_uint32(f"{v}.block_count", d.n_layer)
    w.add_uint32(f"{v}.projection_dim", text_n_embd)
    w.add_uint32(f"{v}.attention.head_count", d.n_head)
    w.add_float32(f"{v}.attention.layer_norm_epsilon", 1e-5)
    w.add_array(f"{v}.image_mean", [0.5, 0.5, 0.5])
    w.add_array(f"{v}.image_std", [0.5, 0.5, 0.5])
    w.add_uint32(f"{v}.projector.scale_factor", d.merge)

    def rand(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    ones = lambda n: np.ones(n, np.float32)  # noqa: E731
    zeros = lambda n: np.zeros(n, np.float32)  # noqa: E731
    w.add_tensor("v.patch_embd.weight", rand(d.n_embd, 3, d.patch, d.patch).astype(np.float16))
    w.add_tensor("v.patch_embd.bias", zeros(d.n_embd))
    w.add_tensor("v.position_embd.weight", rand(d.pos_side * d.pos_side, d.n_embd))
    for i in range(d.n_layer):
        p = f"v.blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(f"{p}.{name}.weight", rand(d.n_embd, d.n_embd))
            w.add_tensor(f"{p}.{name}.bias", zeros(d.n_embd))
        w.add_tensor(f"{p}.ffn_up.weight", rand(d.n_ff, d.n_embd))
        w.add_tensor(f"{p}.ffn_up.bias", zeros(d.n_ff))
        w.add_tensor(f"{p}.ffn_down.weight", rand(d.n_embd, d.n_ff))
        w.add_tensor(f"{p}.ffn_down.bias", zeros(d.n_embd))
        for ln in ("ln1", "ln2"):
            w.add_tensor(f"{p}.{ln}.weight", ones(d.n_embd))
            w.add_tensor(f"{p}.{ln}.bias", zeros(d.n_embd))
    w.add_tensor("v.post_ln.weight", ones(d.n_embd))
    w.add_tensor("v.post_ln.bias", zeros(d.n_embd))
    merged = d.n_embd * d.merge * d.merge
    w.add_tensor("mm.input_norm.weight", ones(d.n_embd))
    w.add_tensor("mm.input_norm.bias", zeros(d.n_embd))
    w.add_tensor("mm.1.weight", rand(merged, merged))
    w.add_tensor("mm.1.bias", zeros(merged))
    w.add_tensor("mm.2.weight", rand(text_n_embd, merged))
    w.add_tensor("mm.2.bias", zeros(text_n_embd))
    _finish(w)
    return path


def write_toy_pair(folder: str | Path, *, scripted: bool = True, seed: int = 0,
                   context_length: int | None = None) -> tuple[Path, Path]:
    """Write ``model.gguf`` and ``mmproj.gguf`` into ``folder``; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kind = "scripted" if scripted else "random"
    model = write_text_model(folder / f"toy-{kind}.gguf", scripted=scripted, seed=seed,
                             context_length=context_length)
    mmproj = write_projector(folder / f"mmproj-toy-{kind}.gguf", seed=seed + 1)
    return model, mmproj


__all__ = [
    "FULL_TEXT", "FULL_VISION", "SCRIPTED_ANSWER", "SCRIPTED_THINKING", "TextDims", "VisionDims",
    "replace", "write_full_pair", "write_projector", "write_text_model", "write_toy_pair",
]


# ---------------------------------------------------------------------------------------------
# Full size (benchmarks): real dimensions and tensor types, random quantized blocks, written
# tensor by tensor so that an 11 GB pair never sits in memory.

def _use_more_bits(i: int, n: int) -> bool:
    """llama-quantize's Q4_K_M rule for which layers get a bigger type."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _random_blocks(rng: np.random.Generator, qtype, n_values: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Random but valid blocks of ``qtype``: finite f16 scales, weights of magnitude ~0.02."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = n_values // block
    data = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    q = gguf.GGMLQuantizationType

    def put_f16(offset: int, value: float) -> None:
        data[:, offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)

    if qtype == q.Q4_K:
        put_f16(0, 2e-5)  # d
        put_f16(2, 2e-5)  # dmin
    elif qtype == q.Q6_K:
        put_f16(208, 1e-5)
    elif qtype == q.Q5_0:
        put_f16(0, 2e-3)
    elif qtype == q.Q8_0:
        put_f16(0, 2e-4)
    else:
        raise ValueError(f"no random blocks for {qtype}")
    return data


class _StreamedTensors:
    """Tensor specs now, data later: header first, then one tensor at a time."""

    def __init__(self, seed: int) -> None:
        self.specs: list[tuple[str, tuple[int, ...], Any]] = []
        self.rng = np.random.default_rng(seed)

    def add(self, name: str, shape: tuple[int, ...], qtype: Any) -> None:
        self.specs.append((name, shape, qtype))

    def nbytes(self, shape: tuple[int, ...], qtype) -> int:  # type: ignore[no-untyped-def]
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[qtype]
        return int(np.prod(shape)) // block * size

    def data(self, shape: tuple[int, ...], qtype, fill: float | None) -> np.ndarray:  # type: ignore[no-untyped-def]
        import gguf

        q = gguf.GGMLQuantizationType
        n = int(np.prod(shape))
        if qtype == q.F32:
            if fill is not None:
                return np.full(shape, fill, np.float32)
            return (self.rng.standard_normal(shape) * 0.02).astype(np.float32)
        if qtype == q.F16:
            return (self.rng.standard_normal(shape) * 0.02).astype(np.float16)
        return _random_blocks(self.rng, qtype, n)

    def write(self, w, fills: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
        import gguf

        q = gguf.GGMLQuantizationType
        for name, shape, qtype in self.specs:
            if qtype in (q.F32, q.F16):
                dtype = np.float32 if qtype == q.F32 else np.float16
                w.add_tensor_info(name, shape, np.dtype(dtype), self.nbytes(shape, qtype))
            else:
                block, size = gguf.GGML_QUANT_SIZES[qtype]
                byte_shape = (*shape[:-1], shape[-1] // block * size)
                w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), self.nbytes(shape, qtype), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for name, shape, qtype in self.specs:
            fill = next((v for k, v in fills.items() if name.endswith(k)), None)
            w.write_tensor_data(self.data(shape, qtype, fill))
        w.close()


def write_full_text_model(path: str | Path, *, seed: int = 0) -> Path:
    """Kimi-VL-A3B's text model at full size with Q4_K_M's tensor types (random blocks)."""
    import gguf

    q = gguf.GGMLQuantizationType
    path = Path(path)
    d = FULL_TEXT
    assert d.n_vocab is not None
    tokens, types, merges = toy_vocab()
    tokens += [_encode_word(f"tok{i}") for i in range(d.n_vocab - len(tokens))]
    types += [1] * (d.n_vocab - len(types))
    k_mla = d.qk_nope + d.qk_rope
    w = _writer(path, "deepseek2")
    a = "deepseek2"
    w.add_string("general.name", "kvl-synthetic-kimi-vl-a3b-Q4_K_M")
    w.add_uint32("general.file_type", 15)  # MOSTLY_Q4_K_M
    for key, value in [
        ("context_length", d.n_ctx_train), ("embedding_length", d.n_embd), ("block_count", d.n_layer),
        ("feed_forward_length", d.n_ff), ("attention.head_count", d.n_head), ("attention.head_count_kv", 1),
        ("expert_count", d.n_expert), ("expert_used_count", d.n_expert_used),
        ("leading_dense_block_count", 1), ("vocab_size", d.n_vocab), ("attention.q_lora_rank", 0),
        ("attention.kv_lora_rank", d.kv_lora_rank), ("attention.key_length", d.kv_lora_rank + d.qk_rope),
        ("attention.value_length", d.kv_lora_rank), ("attention.key_length_mla", k_mla),
        ("attention.value_length_mla", d.v_head), ("expert_feed_forward_length", d.n_ff_exp),
        ("expert_shared_count", d.n_expert_shared), ("expert_gating_func", 2),
        ("rope.dimension_count", d.qk_rope),
    ]:
        w.add_uint32(f"{a}.{key}", value)
    w.add_float32(f"{a}.rope.freq_base", 800000.0)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32(f"{a}.expert_weights_scale", 2.446)
    w.add_bool(f"{a}.expert_weights_norm", True)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "kimi-k2")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", types)
    w.add_array("tokenizer.ggml.merges", merges)
    w.add_uint32("tokenizer.ggml.bos_token_id", tokens.index("[BOS]"))
    w.add_uint32("tokenizer.ggml.eos_token_id", tokens.index("<|im_end|>"))
    w.add_uint32("tokenizer.ggml.padding_token_id", tokens.index("[PAD]"))
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_string("tokenizer.chat_template", KIMI_CHAT_TEMPLATE)

    t = _StreamedTensors(seed)
    t.add("token_embd.weight", (d.n_vocab, d.n_embd), q.Q4_K)
    t.add("output_norm.weight", (d.n_embd,), q.F32)
    t.add("output.weight", (d.n_vocab, d.n_embd), q.Q6_K)
    for i in range(d.n_layer):
        p = f"blk.{i}"
        more = _use_more_bits(i, d.n_layer)
        t.add(f"{p}.attn_norm.weight", (d.n_embd,), q.F32)
        t.add(f"{p}.attn_kv_a_norm.weight", (d.kv_lora_rank,), q.F32)
        t.add(f"{p}.attn_q.weight", (d.n_head * k_mla, d.n_embd), q.Q4_K)
        t.add(f"{p}.attn_kv_a_mqa.weight", (d.kv_lora_rank + d.qk_rope, d.n_embd), q.Q4_K)
        t.add(f"{p}.attn_k_b.weight", (d.n_head, d.kv_lora_rank, d.qk_nope), q.Q8_0)  # 128 columns
        t.add(f"{p}.attn_v_b.weight", (d.n_head, d.v_head, d.kv_lora_rank), q.Q6_K)
        t.add(f"{p}.attn_output.weight", (d.n_embd, d.n_head * d.v_head), q.Q4_K)
        t.add(f"{p}.ffn_norm.weight", (d.n_embd,), q.F32)
        if i == 0:
            t.add(f"{p}.ffn_gate.weight", (d.n_ff, d.n_embd), q.Q4_K)
            t.add(f"{p}.ffn_up.weight", (d.n_ff, d.n_embd), q.Q4_K)
            t.add(f"{p}.ffn_down.weight", (d.n_embd, d.n_ff), q.Q6_K if more else q.Q4_K)
            continue
        n_sh = d.n_ff_exp * d.n_expert_shared
        t.add(f"{p}.ffn_gate_inp.weight", (d.n_expert, d.n_embd), q.F32)
        t.add(f"{p}.exp_probs_b.bias", (d.n_expert,), q.F32)
        t.add(f"{p}.ffn_gate_exps.weight", (d.n_expert, d.n_ff_exp, d.n_embd), q.Q4_K)
        t.add(f"{p}.ffn_up_exps.weight", (d.n_expert, d.n_ff_exp, d.n_embd), q.Q4_K)
        # 1408 columns are not a multiple of 256: llama-quantize falls back to Q8_0 / Q5_0
        t.add(f"{p}.ffn_down_exps.weight", (d.n_expert, d.n_embd, d.n_ff_exp), q.Q8_0 if more else q.Q5_0)
        t.add(f"{p}.ffn_gate_shexp.weight", (n_sh, d.n_embd), q.Q4_K)
        t.add(f"{p}.ffn_up_shexp.weight", (n_sh, d.n_embd), q.Q4_K)
        t.add(f"{p}.ffn_down_shexp.weight", (d.n_embd, n_sh), q.Q6_K if more else q.Q4_K)
    t.write(w, {"norm.weight": 1.0, "exp_probs_b.bias": 0.0})
    return path


def write_full_projector(path: str | Path, *, seed: int = 1) -> Path:
    """The kimivl projector at full size, Q8_0 like the published one (4304-column FFN down: F16)."""
    import gguf

    q = gguf.GGMLQuantizationType
    path = Path(path)
    d = FULL_VISION
    w = _writer(path, "clip")
    w.add_string("general.name", "kvl-synthetic-kimi-vl-a3b-mmproj-Q8_0")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", "kimivl")
    w.add_bool("clip.use_gelu", True)
    v = "clip.vision"
    for key, value in [("image_size", d.pos_side * d.patch), ("patch_size", d.patch),
                       ("embedding_length", d.n_embd), ("feed_forward_length", d.n_ff),
                       ("block_count", d.n_layer), ("projection_dim", FULL_TEXT.n_embd),
                       ("attention.head_count", d.n_head), ("projector.scale_factor", d.merge)]:
        w.add_uint32(f"{v}.{key}", value)
    w.add_float32(f"{v}.attention.layer_norm_epsilon", 1e-5)
    w.add_array(f"{v}.image_mean", [0.5, 0.5, 0.5])
    w.add_array(f"{v}.image_std", [0.5, 0.5, 0.5])
    t = _StreamedTensors(seed)
    t.add("v.patch_embd.weight", (d.n_embd, 3, d.patch, d.patch), q.F16)
    t.add("v.patch_embd.bias", (d.n_embd,), q.F32)
    t.add("v.position_embd.weight", (d.pos_side * d.pos_side, d.n_embd), q.F32)
    for i in range(d.n_layer):
        p = f"v.blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            t.add(f"{p}.{name}.weight", (d.n_embd, d.n_embd), q.Q8_0)
            t.add(f"{p}.{name}.bias", (d.n_embd,), q.F32)
        t.add(f"{p}.ffn_up.weight", (d.n_ff, d.n_embd), q.Q8_0)
        t.add(f"{p}.ffn_up.bias", (d.n_ff,), q.F32)
        t.add(f"{p}.ffn_down.weight", (d.n_embd, d.n_ff), q.F16)
        t.add(f"{p}.ffn_down.bias", (d.n_embd,), q.F32)
        for ln in ("ln1", "ln2"):
            t.add(f"{p}.{ln}.weight", (d.n_embd,), q.F32)
            t.add(f"{p}.{ln}.bias", (d.n_embd,), q.F32)
    t.add("v.post_ln.weight", (d.n_embd,), q.F32)
    t.add("v.post_ln.bias", (d.n_embd,), q.F32)
    merged = d.n_embd * d.merge * d.merge
    t.add("mm.input_norm.weight", (d.n_embd,), q.F32)
    t.add("mm.input_norm.bias", (d.n_embd,), q.F32)
    t.add("mm.1.weight", (merged, merged), q.Q8_0)
    t.add("mm.1.bias", (merged,), q.F32)
    t.add("mm.2.weight", (FULL_TEXT.n_embd, merged), q.Q8_0)
    t.add("mm.2.bias", (FULL_TEXT.n_embd,), q.F32)
    t.write(w, {"ln1.weight": 1.0, "ln2.weight": 1.0, "post_ln.weight": 1.0, "input_norm.weight": 1.0,
                ".bias": 0.0})
    return path


def write_full_pair(folder: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write the full-size synthetic Q4_K_M pair (about 11 GB) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = write_full_text_model(folder / "synthetic-Kimi-VL-A3B-Q4_K_M.gguf", seed=seed)
    mmproj = write_full_projector(folder / "mmproj-synthetic-Kimi-VL-A3B-Q8_0.gguf", seed=seed + 1)
    return model, mmproj
