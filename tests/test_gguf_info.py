"""The GGUF header reader on the toy pair: what it finds, and a header cut short."""

from __future__ import annotations

import pytest

from kvl_cli.engine.gguf_info import read_gguf_info
from kvl_cli.errors import ModelError


def test_gguf_header_of_the_toy_pair(scripted):
    text, proj = read_gguf_info(scripted.model), read_gguf_info(scripted.mmproj)
    assert text.architecture == "deepseek2" and not text.is_projector
    assert text.text_embedding_length == 64
    assert text.array_lengths["tokenizer.ggml.tokens"] > 256
    assert proj.is_projector and proj.projector_type == "kimivl" and proj.projection_dim == 64


def test_gguf_truncated_header(scripted, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(scripted.model.read_bytes()[:200])
    with pytest.raises(ModelError, match="truncated"):
        read_gguf_info(cut)
