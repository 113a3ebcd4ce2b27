"""The shapes the writers use: toy defaults, and Kimi-VL-A3B's real dimensions."""

from __future__ import annotations

from dataclasses import dataclass


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


TOY_TEXT = TextDims()
TOY_VISION = VisionDims()

# Kimi-VL-A3B's real dimensions (kimi-vl-facts.md).
FULL_TEXT = TextDims(
    n_embd=2048, n_layer=27, n_head=16, n_ff=11264, n_expert=64, n_expert_used=6, n_expert_shared=2,
    n_ff_exp=1408, kv_lora_rank=512, qk_nope=128, qk_rope=64, v_head=128, n_ctx_train=131072,
    n_vocab=163840,
)
FULL_VISION = VisionDims(n_embd=1152, n_layer=27, n_head=16, n_ff=4304, patch=14, pos_side=64, merge=2)
