"""Toy Kimi-VL pairs for tests: a tiny deepseek2 text model and a tiny kimivl projector, in f32/f16.

``scripted``: attention-output and FFN-down weights are zero, so the residual stream is the token
embedding and greedy decoding follows SCRIPT_CHAIN. ``random``: every weight random.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .dims import TOY_TEXT, TOY_VISION, TextDims, VisionDims
from .vocab import SCRIPT_CHAIN, token_id, tokenizer_metadata, toy_vocab
from .writer import add_metadata, finish, open_writer


class ToyWeights:
    """Random tensors from one seeded generator, drawn in the order the writer adds them."""

    def __init__(self, seed: int, scripted: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.scripted = scripted

    def rand(self, *shape: int, scale: float = 0.02) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def zeros_or_rand(self, *shape: int) -> np.ndarray:
        """Zero in the scripted model (the weights that would disturb its chain), random otherwise."""
        return np.zeros(shape, np.float32) if self.scripted else self.rand(*shape)

    @staticmethod
    def ones(n: int) -> np.ndarray:
        return np.ones(n, np.float32)

    @staticmethod
    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, np.float32)


def _text_metadata(d: TextDims, n_vocab: int, name: str, context_length: int | None) -> list[tuple[str, Any]]:
    a = "deepseek2."
    return [
        ("general.name", name),
        (a + "context_length", context_length or d.n_ctx_train),
        (a + "embedding_length", d.n_embd),
        (a + "block_count", d.n_layer),
        (a + "feed_forward_length", d.n_ff),
        (a + "attention.head_count", d.n_head),
        (a + "attention.head_count_kv", 1),
        (a + "rope.freq_base", 800000.0),
        (a + "attention.layer_norm_rms_epsilon", 1e-5),
        (a + "expert_count", d.n_expert),
        (a + "expert_used_count", d.n_expert_used),
        (a + "leading_dense_block_count", 1),
        (a + "vocab_size", n_vocab),
        (a + "attention.q_lora_rank", 0),
        (a + "attention.kv_lora_rank", d.kv_lora_rank),
        (a + "attention.key_length", d.kv_lora_rank + d.qk_rope),
        (a + "attention.value_length", d.kv_lora_rank),
        (a + "attention.key_length_mla", d.qk_nope + d.qk_rope),
        (a + "attention.value_length_mla", d.v_head),
        (a + "expert_feed_forward_length", d.n_ff_exp),
        (a + "expert_shared_count", d.n_expert_shared),
        (a + "expert_weights_scale", 2.446),
        (a + "expert_weights_norm", True),
        (a + "expert_gating_func", 2),  # sigmoid
        (a + "rope.dimension_count", d.qk_rope),
    ]


Chain = list[tuple[str | bytes, str | bytes]]


def _scripted_embeddings(wts: ToyWeights, tokens: list[str], d: TextDims,
                         chain: Chain = SCRIPT_CHAIN) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal embeddings for the chain's tokens (no cross-talk between their logits); each
    token's output row points at its successor."""
    n_vocab = len(tokens)
    if len(chain) > d.n_embd:
        raise ValueError("n_embd too small for the scripted chain")
    q, _ = np.linalg.qr(wts.rng.standard_normal((d.n_embd, d.n_embd)))
    embd = wts.rand(n_vocab, d.n_embd, scale=1.0)
    output = np.zeros((n_vocab, d.n_embd), np.float32)
    for i, (src, dst) in enumerate(chain):
        s, t = token_id(tokens, src), token_id(tokens, dst)
        embd[s] = q[i]
        output[t] += 10.0 * q[i]
    return embd, output


def _random_embeddings(wts: ToyWeights, tokens: list[str], d: TextDims) -> tuple[np.ndarray, np.ndarray]:
    embd = wts.rand(len(tokens), d.n_embd, scale=1.0)
    output = wts.rand(len(tokens), d.n_embd, scale=0.5)
    # end-of-generation tokens get zero logits: under greedy decoding the random model never
    # stops by itself, so tests can rely on length limits and interrupt it
    for special in ("[EOS]", "<|im_end|>", "[PAD]"):
        output[tokens.index(special)] = 0.0
    return embd, output


def _add_attention(w: Any, wts: ToyWeights, d: TextDims, p: str) -> None:
    k_mla = d.qk_nope + d.qk_rope
    w.add_tensor(f"{p}.attn_norm.weight", wts.ones(d.n_embd))
    w.add_tensor(f"{p}.attn_kv_a_norm.weight", wts.ones(d.kv_lora_rank))
    w.add_tensor(f"{p}.attn_q.weight", wts.rand(d.n_head * k_mla, d.n_embd))
    w.add_tensor(f"{p}.attn_kv_a_mqa.weight", wts.rand(d.kv_lora_rank + d.qk_rope, d.n_embd))
    w.add_tensor(f"{p}.attn_k_b.weight", wts.rand(d.n_head, d.kv_lora_rank, d.qk_nope))
    w.add_tensor(f"{p}.attn_v_b.weight", wts.rand(d.n_head, d.v_head, d.kv_lora_rank))
    w.add_tensor(f"{p}.attn_output.weight", wts.zeros_or_rand(d.n_embd, d.n_head * d.v_head))


def _add_dense_ffn(w: Any, wts: ToyWeights, d: TextDims, p: str) -> None:
    w.add_tensor(f"{p}.ffn_gate.weight", wts.rand(d.n_ff, d.n_embd))
    w.add_tensor(f"{p}.ffn_up.weight", wts.rand(d.n_ff, d.n_embd))
    w.add_tensor(f"{p}.ffn_down.weight", wts.zeros_or_rand(d.n_embd, d.n_ff))


def _add_moe_ffn(w: Any, wts: ToyWeights, d: TextDims, p: str) -> None:
    n_sh = d.n_ff_exp * d.n_expert_shared
    w.add_tensor(f"{p}.ffn_gate_inp.weight", wts.rand(d.n_expert, d.n_embd))
    w.add_tensor(f"{p}.exp_probs_b.bias", wts.rand(d.n_expert))
    w.add_tensor(f"{p}.ffn_gate_exps.weight", wts.rand(d.n_expert, d.n_ff_exp, d.n_embd))
    w.add_tensor(f"{p}.ffn_up_exps.weight", wts.rand(d.n_expert, d.n_ff_exp, d.n_embd))
    w.add_tensor(f"{p}.ffn_down_exps.weight", wts.zeros_or_rand(d.n_expert, d.n_embd, d.n_ff_exp))
    w.add_tensor(f"{p}.ffn_gate_shexp.weight", wts.rand(n_sh, d.n_embd))
    w.add_tensor(f"{p}.ffn_up_shexp.weight", wts.rand(n_sh, d.n_embd))
    w.add_tensor(f"{p}.ffn_down_shexp.weight", wts.zeros_or_rand(d.n_embd, n_sh))


def write_text_model(path: str | Path, *, scripted: bool = True, dims: TextDims = TOY_TEXT, seed: int = 0,
                     context_length: int | None = None, chain: Chain | None = None) -> Path:
    """Write a toy deepseek2 text model. ``scripted`` makes greedy output follow SCRIPT_CHAIN (or
    ``chain``: each token's successor, e.g. a model that ends while it thinks)."""
    path = Path(path)
    wts = ToyWeights(seed, scripted)
    tokens, types, merges = toy_vocab()
    d = dims
    w = open_writer(path, "deepseek2")
    name = "kvl-toy-kimi-vl" + ("-scripted" if scripted else "-random")
    add_metadata(w, _text_metadata(d, len(tokens), name, context_length))
    add_metadata(w, tokenizer_metadata(tokens, types, merges))
    if scripted:
        embd, output = _scripted_embeddings(wts, tokens, d, chain or SCRIPT_CHAIN)
    else:
        embd, output = _random_embeddings(wts, tokens, d)
    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", wts.ones(d.n_embd))
    w.add_tensor("output.weight", output)
    for i in range(d.n_layer):
        p = f"blk.{i}"
        _add_attention(w, wts, d, p)
        w.add_tensor(f"{p}.ffn_norm.weight", wts.ones(d.n_embd))
        (_add_dense_ffn if i == 0 else _add_moe_ffn)(w, wts, d, p)
    finish(w)
    return path


def _projector_metadata(d: VisionDims, text_n_embd: int) -> list[tuple[str, Any]]:
    v = "clip.vision."
    return [
        ("general.name", "kvl-toy-kimi-vl-mmproj"),
        ("clip.has_vision_encoder", True),
        ("clip.projector_type", "kimivl"),
        ("clip.use_gelu", True),
        (v + "image_size", d.pos_side * d.patch),
        (v + "patch_size", d.patch),
        (v + "embedding_length", d.n_embd),
        (v + "feed_forward_length", d.n_ff),
        (v + "block_count", d.n_layer),
        (v + "projection_dim", text_n_embd),
        (v + "attention.head_count", d.n_head),
        (v + "attention.layer_norm_epsilon", 1e-5),
        (v + "image_mean", [0.5, 0.5, 0.5]),
        (v + "image_std", [0.5, 0.5, 0.5]),
        (v + "projector.scale_factor", d.merge),
    ]


def _add_vision_block(w: Any, wts: ToyWeights, d: VisionDims, p: str) -> None:
    for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
        w.add_tensor(f"{p}.{name}.weight", wts.rand(d.n_embd, d.n_embd))
        w.add_tensor(f"{p}.{name}.bias", wts.zeros(d.n_embd))
    w.add_tensor(f"{p}.ffn_up.weight", wts.rand(d.n_ff, d.n_embd))
    w.add_tensor(f"{p}.ffn_up.bias", wts.zeros(d.n_ff))
    w.add_tensor(f"{p}.ffn_down.weight", wts.rand(d.n_embd, d.n_ff))
    w.add_tensor(f"{p}.ffn_down.bias", wts.zeros(d.n_embd))
    for ln in ("ln1", "ln2"):
        w.add_tensor(f"{p}.{ln}.weight", wts.ones(d.n_embd))
        w.add_tensor(f"{p}.{ln}.bias", wts.zeros(d.n_embd))


def write_projector(path: str | Path, *, text_n_embd: int = TOY_TEXT.n_embd, dims: VisionDims = TOY_VISION,
                    seed: int = 1) -> Path:
    """Write a toy kimivl projector (MoonViT + patch merger) whose output width is ``text_n_embd``."""
    path = Path(path)
    wts = ToyWeights(seed)
    d = dims
    w = open_writer(path, "clip")
    add_metadata(w, _projector_metadata(d, text_n_embd))
    w.add_tensor("v.patch_embd.weight", wts.rand(d.n_embd, 3, d.patch, d.patch).astype(np.float16))
    w.add_tensor("v.patch_embd.bias", wts.zeros(d.n_embd))
    w.add_tensor("v.position_embd.weight", wts.rand(d.pos_side * d.pos_side, d.n_embd))
    for i in range(d.n_layer):
        _add_vision_block(w, wts, d, f"v.blk.{i}")
    w.add_tensor("v.post_ln.weight", wts.ones(d.n_embd))
    w.add_tensor("v.post_ln.bias", wts.zeros(d.n_embd))
    merged = d.n_embd * d.merge * d.merge
    w.add_tensor("mm.input_norm.weight", wts.ones(d.n_embd))
    w.add_tensor("mm.input_norm.bias", wts.zeros(d.n_embd))
    w.add_tensor("mm.1.weight", wts.rand(merged, merged))
    w.add_tensor("mm.1.bias", wts.zeros(merged))
    w.add_tensor("mm.2.weight", wts.rand(text_n_embd, merged))
    w.add_tensor("mm.2.bias", wts.zeros(text_n_embd))
    finish(w)
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
