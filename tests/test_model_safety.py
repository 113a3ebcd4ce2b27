"""Model files that lie: headers claiming absurd sizes are refused from the header (exit 4, one
line) before llama.cpp sees them, and pulled file names never leave the model's folder."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from kvl_cli.engine.gguf_info import GGML_BLOCKS, read_gguf_info
from kvl_cli.errors import ModelError, UsageError
from kvl_cli.store.names import check_typed_name, file_in_folder, name_problem

from .ggufbytes import (
    ARRAY,
    F32,
    STRING,
    U32,
    gguf_string,
    kv_array,
    kv_scalar,
    kv_string,
    minimal_model,
    tensor_info,
)

DAMAGED = "is damaged or not a GGUF model"


def put_u64(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<Q", value) + data[offset + 8:]


def write(tmp_path: Path, data: bytes, name: str = "bad.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


ARCH = kv_string("general.architecture", "llama")
ABSURD = {  # name: (header bytes, what the message says)
    "tensor count": (minimal_model(n_tensors=2**60), "claims 1,152,921,504,606,846,976 tensors"),
    "key count": (minimal_model(n_kv=2**63), "9,223,372,036,854,775,808 keys"),
    "string length": (minimal_model(kvs=[kv_string("general.architecture", "llama", claimed=2**62)]),
                      "a string claims 4,611,686,018,427,387,904 bytes"),
    "key length": (minimal_model(kvs=[gguf_string("k" * 70000) + struct.pack("<IB", 0, 1)]),
                   "a key of 70,000 bytes"),
    "string array length": (minimal_model(kvs=[ARCH, kv_array("tokenizer.ggml.tokens", STRING, ["a"], 2**61)]),
                            "'tokenizer.ggml.tokens' claims 2,305,843,009,213,693,952 items"),
    "number array length": (minimal_model(kvs=[ARCH, kv_array("x", U32, [1], 2**60)]), "'x' claims"),
    "value type": (minimal_model(kvs=[ARCH, gguf_string("x") + struct.pack("<I", 99)]),
                   "unknown GGUF value type 99"),
    "array of arrays": (minimal_model(kvs=[ARCH, gguf_string("x") + struct.pack("<IIQ", ARRAY, ARRAY, 1)]),
                        "an array of arrays"),
    "version": (minimal_model(version=1), "GGUF version 1"),
    "alignment": (minimal_model(kvs=[ARCH, kv_scalar("general.alignment", U32, 24)]), "not a power of two"),
    "dimensions": (minimal_model(tensors=[tensor_info("w", [8, 1, 1, 1, 1])]), "has 5 dimensions"),
    "element count": (minimal_model(tensors=[tensor_info("w", [2**21, 2**21])]),
                      "claims 4,398,046,511,104 elements"),
    "elements for the file": (minimal_model(tensors=[tensor_info("w", [4096, 4096])]),
                              "claims 16,777,216 elements, more than the file's"),
    "negative dimension": (minimal_model(tensors=[tensor_info("w", [8, -1])]), "negative dimension"),
    "tensor type": (minimal_model(tensors=[tensor_info("w", [8], ggml_type=31)]), "invalid type (31)"),
    "tensor name": (minimal_model(tensors=[tensor_info("w" * 100, [8])]), "a tensor name of 100 bytes"),
    "block rows": (minimal_model(tensors=[tensor_info("w", [8], ggml_type=12)]), "not whole blocks of 256"),
    "tensor offset": (minimal_model(tensors=[tensor_info("w", [8], offset=2**50)]), "past the end of the file"),
    "newline in a name": (minimal_model(tensors=[tensor_info("w\nkvl: all good", [8, -1])]),
                          "tensor 'w\\nkvl: all good' has a negative dimension"),
}


@pytest.mark.parametrize("case", list(ABSURD))
def test_absurd_headers_are_refused_from_the_header(tmp_path, case):
    header, says = ABSURD[case]
    with pytest.raises(ModelError) as exc:
        read_gguf_info(write(tmp_path, header.to_bytes()))
    assert exc.value.exit_code == 4
    assert says in str(exc.value)
    assert DAMAGED in str(exc.value) and "\n" not in str(exc.value)
    assert "convert it again" in str(exc.value)  # says what to do


def test_a_sound_minimal_header_reads(tmp_path):
    info = read_gguf_info(write(tmp_path, minimal_model().to_bytes()))
    assert info.architecture == "llama" and info.text_embedding_length == 8 and info.n_tensors == 1


def test_a_cut_off_download_says_truncated(scripted, tmp_path):
    data = scripted.model.read_bytes()
    for size in (200, len(data) // 2, len(data) - 1):
        with pytest.raises(ModelError, match="is truncated or damaged") as exc:
            read_gguf_info(write(tmp_path, data[:size]))
        assert "pull it again" in str(exc.value)


def test_wrongly_typed_fields_read_as_unknown(tmp_path):
    g = minimal_model(kvs=[ARCH, kv_string("llama.embedding_length", "wide"), kv_scalar("llama.context_length", F32,
                                                                                       1.5)])
    info = read_gguf_info(write(tmp_path, g.to_bytes()))
    assert info.text_embedding_length is None and info.context_length is None


def test_ggml_block_table_matches_the_gguf_package():
    import gguf

    for qtype, sizes in gguf.GGML_QUANT_SIZES.items():
        if qtype.name == "Q8_1":  # gguf-py still sizes its old f32 scales (40); ggml's block has two f16 (36)
            assert GGML_BLOCKS[int(qtype)] == (32, 36)
            continue
        assert GGML_BLOCKS[int(qtype)] == sizes, qtype.name


def test_the_toy_pair_passes_the_full_check(scripted, random_pair):
    for path in (scripted.model, scripted.mmproj, random_pair.model, random_pair.mmproj):
        info = read_gguf_info(path)
        assert info.n_tensors > 10


@pytest.mark.parametrize("which", ["model", "mmproj"])
def test_the_cli_refuses_an_absurd_header_in_one_line(kvl, scripted, images, tmp_path, which):
    bad = write(tmp_path, put_u64(getattr(scripted, which).read_bytes(), 8, 2**60), f"{which}-bad.gguf")
    pair = {"model": scripted.model, "mmproj": scripted.mmproj, which: bad}
    start = time.monotonic()
    r = kvl("caption", "--model", pair["model"], "--mmproj", pair["mmproj"], images["jpg"])
    assert r.code == 4
    assert time.monotonic() - start < 5
    [line] = [x for x in r.err.splitlines() if x.strip()]
    assert line.startswith(f"kvl: error: {bad} {DAMAGED}: the header claims 1,152,921,504,606,846,976 tensors")
    assert line.endswith("(download or convert it again)")
    assert r.out == ""


def test_a_huge_string_claim_in_a_projector_is_refused_through_the_cli(kvl, scripted, images, tmp_path):
    data = scripted.mmproj.read_bytes()
    key = b"general.architecture"
    at = data.index(key) + len(key) + 4  # the value's length field
    bad = write(tmp_path, put_u64(data, at, 2**62), "mmproj-bad.gguf")
    r = kvl("caption", "--model", scripted.model, "--mmproj", bad, images["jpg"])
    assert r.code == 4
    [line] = [x for x in r.err.splitlines() if x.strip()]
    assert line.startswith(f"kvl: error: {bad} {DAMAGED}: a string claims 4,611,686,018,427,387,904 bytes")


# ---- file names from repositories ---------------------------------------------------------------------


@pytest.mark.parametrize("name,problem", [
    ("", "empty"), ("../x", "'..'"), ("a/../../x", "'..'"), ("/etc/passwd", "absolute"), ("C:x", "drive letter"),
    ("a\\b", "backslash"), ("a\x00b", "control"), ("a\x1b[2Jb", "control"), ("a//b", "empty or '.'"),
    ("./a", "empty or '.'"), ("a/", "empty or '.'"),
])
def test_unsafe_names(name, problem):
    assert problem in (name_problem(name) or "")
    with pytest.raises(UsageError):
        check_typed_name(name, "--file")


@pytest.mark.parametrize("name", ["model.gguf", "Q4_K_M/model-00001-of-00002.gguf", "..gguf", "a..b.gguf"])
def test_safe_names(name, tmp_path):
    assert name_problem(name) is None
    assert file_in_folder(tmp_path, name, "test") == tmp_path.joinpath(*name.split("/"))


def test_a_symlinked_subfolder_cannot_lead_outside(tmp_path):
    folder, outside = tmp_path / "models" / "m" / "Q4", tmp_path / "outside"
    folder.mkdir(parents=True)
    outside.mkdir()
    (folder / "sub").symlink_to(outside)
    with pytest.raises(ModelError, match="resolves outside the model's folder"):
        file_in_folder(folder, "sub/x.gguf", "a listing")
