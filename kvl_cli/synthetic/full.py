"""The full-size synthetic pair (benchmarks): Kimi-VL-A3B's real dimensions and Q4_K_M's tensor
types, random quantized blocks, about 11 GB, written tensor by tensor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .dims import FULL_TEXT, FULL_VISION, TextDims
from .streamed import StreamedTensors
from .vocab import encode_word, tokenizer_metadata, toy_vocab
from .writer import add_metadata, open_writer


def _use_more_bits(i: int, n: int) -> bool:
    """llama-quantize's Q4_K_M rule for which layers get a bigger type."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _full_text_metadata(d: TextDims, n_vocab: int) -> list[tuple[str, Any]]:
    a = "deepseek2."
    counts = [
        ("context_length", d.n_ctx_train), ("embedding_length", d.n_embd), ("block_count", d.n_layer),
        ("feed_forward_length", d.n_ff), ("attention.head_count", d.n_head), ("attention.head_count_kv", 1),
        ("expert_count", d.n_expert), ("expert_used_count", d.n_expert_used),
        ("leading_dense_block_count", 1), ("vocab_size", n_vocab), ("attention.q_lora_rank", 0),
        ("attention.kv_lora_rank", d.kv_lora_rank), ("attention.key_length", d.kv_lora_rank + d.qk_rope),
        ("attention.value_length", d.kv_lora_rank), ("attention.key_length_mla", d.qk_nope + d.qk_rope),
        ("attention.value_length_mla", d.v_head), ("expert_feed_forward_length", d.n_ff_exp),
        ("expert_shared_count", d.n_expert_shared), ("expert_gating_func", 2),
        ("rope.dimension_count", d.qk_rope),
    ]
    return [
        ("general.name", "kvl-synthetic-kimi-vl-a3b-Q4_K_M"),
        ("general.file_type", 15),  # MOSTLY_Q4_K_M
        *((a + key, value) for key, value in counts),
        (a + "rope.freq_base", 800000.0),
        (a + "attention.layer_norm_rms_epsilon", 1e-5),
        (a + "expert_weights_scale", 2.446),
        (a + "expert_weights_norm", True),
    ]


def _add_full_text_layer(t: StreamedTensors, d: TextDims, i: int) -> None:
    import gguf

    q = gguf.GGMLQuantizationType
    p = f"blk.{i}"
    more = _use_more_bits(i, d.n_layer)
    t.add(f"{p}.attn_norm.weight", (d.n_embd,), q.F32)
    t.add(f"{p}.attn_kv_a_norm.weight", (d.kv_lora_rank,), q.F32)
    t.add(f"{p}.attn_q.weight", (d.n_head * (d.qk_nope + d.qk_rope), d.n_embd), q.Q4_K)
    t.add(f"{p}.attn_kv_a_mqa.weight", (d.kv_lora_rank + d.qk_rope, d.n_embd), q.Q4_K)
    t.add(f"{p}.attn_k_b.weight", (d.n_head, d.kv_lora_rank, d.qk_nope), q.Q8_0)  # 128 columns
    t.add(f"{p}.attn_v_b.weight", (d.n_head, d.v_head, d.kv_lora_rank), q.Q6_K)
    t.add(f"{p}.attn_output.weight", (d.n_embd, d.n_head * d.v_head), q.Q4_K)
    t.add(f"{p}.ffn_norm.weight", (d.n_embd,), q.F32)
    if i == 0:
        t.add(f"{p}.ffn_gate.weight", (d.n_ff, d.n_embd), q.Q4_K)
        t.add(f"{p}.ffn_up.weight", (d.n_ff, d.n_embd), q.Q4_K)
        t.add(f"{p}.ffn_down.weight", (d.n_embd, d.n_ff), q.Q6_K if more else q.Q4_K)
        return
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


def write_full_text_model(path: str | Path, *, seed: int = 0) -> Path:
    """Kimi-VL-A3B's text model at full size with Q4_K_M's tensor types (random blocks)."""
    import gguf

    q = gguf.GGMLQuantizationType
    path = Path(path)
    d = FULL_TEXT
    assert d.n_vocab is not None
    tokens, types, merges = toy_vocab()
    tokens += [encode_word(f"tok{i}") for i in range(d.n_vocab - len(tokens))]
    types += [1] * (d.n_vocab - len(types))
    w = open_writer(path, "deepseek2")
    add_metadata(w, _full_text_metadata(d, d.n_vocab))
    add_metadata(w, tokenizer_metadata(tokens, types, merges))
    t = StreamedTensors(seed)
    t.add("token_embd.weight", (d.n_vocab, d.n_embd), q.Q4_K)
    t.add("output_norm.weight", (d.n_embd,), q.F32)
    t.add("output.weight", (d.n_vocab, d.n_embd), q.Q6_K)
    for i in range(d.n_layer):
        _add_full_text_layer(t, d, i)
    t.write(w, {"norm.weight": 1.0, "exp_probs_b.bias": 0.0})
    return path


def _full_projector_metadata() -> list[tuple[str, Any]]:
    d, v = FULL_VISION, "clip.vision."
    counts = [("image_size", d.pos_side * d.patch), ("patch_size", d.patch), ("embedding_length", d.n_embd),
              ("feed_forward_length", d.n_ff), ("block_count", d.n_layer), ("projection_dim", FULL_TEXT.n_embd),
              ("attention.head_count", d.n_head), ("projector.scale_factor", d.merge)]
    return [
        ("general.name", "kvl-synthetic-kimi-vl-a3b-mmproj-Q8_0"),
        ("clip.has_vision_encoder", True),
        ("clip.projector_type", "kimivl"),
        ("clip.use_gelu", True),
        *((v + key, value) for key, value in counts),
        (v + "attention.layer_norm_epsilon", 1e-5),
        (v + "image_mean", [0.5, 0.5, 0.5]),
        (v + "image_std", [0.5, 0.5, 0.5]),
    ]


def _add_full_vision_block(t: StreamedTensors, p: str) -> None:
    import gguf

    q, d = gguf.GGMLQuantizationType, FULL_VISION
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


def write_full_projector(path: str | Path, *, seed: int = 1) -> Path:
    """The kimivl projector at full size, Q8_0 like the published one (4304-column FFN down: F16)."""
    import gguf

    q = gguf.GGMLQuantizationType
    path = Path(path)
    d = FULL_VISION
    w = open_writer(path, "clip")
    add_metadata(w, _full_projector_metadata())
    t = StreamedTensors(seed)
    t.add("v.patch_embd.weight", (d.n_embd, 3, d.patch, d.patch), q.F16)
    t.add("v.patch_embd.bias", (d.n_embd,), q.F32)
    t.add("v.position_embd.weight", (d.pos_side * d.pos_side, d.n_embd), q.F32)
    for i in range(d.n_layer):
        _add_full_vision_block(t, f"v.blk.{i}")
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
