"""Fuzzing the GGUF header reader: hand-built headers whose every count may lie, and real toy
models with their header bytes flipped, overwritten, cut or shifted. ``read_gguf_info`` must
return or raise ModelError (never another exception), within a second and bounded memory.

CI runs a few hundred cases; ``KVL_FUZZ_EXAMPLES=20000`` runs a long campaign.
"""

from __future__ import annotations

import os
import signal
import struct
import time
import tracemalloc
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kvl_cli.engine.gguf_info import read_gguf_info  # noqa: E402
from kvl_cli.errors import ModelError  # noqa: E402

from .ggufbytes import SCALAR_FORMATS, Gguf, gguf_string  # noqa: E402

EXAMPLES = int(os.environ.get("KVL_FUZZ_EXAMPLES", "100"))
CASE_SECONDS = 1.0
CASE_MEMORY = 32 * 2**20  # Python allocations during one read
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

BOUNDARIES = [0, 1, 2, 3, 4, 7, 8, 9, 63, 64, 65, 255, 256, 2**16 - 1, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
              2**40, 2**40 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
u64 = st.one_of(st.sampled_from(BOUNDARIES), st.integers(0, 2**64 - 1), st.integers(0, 4096))
u32 = st.one_of(st.sampled_from([b for b in BOUNDARIES if b < 2**32]), st.integers(0, 2**32 - 1), st.integers(0, 64))
i64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-2, 4096), st.sampled_from([2**31, 2**40, 2**62]))


class CaseTimeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise CaseTimeout


def check_case(path: Path, data: bytes) -> str:
    """Read ``data`` as a GGUF file: 'ok' or 'refused'; anything else fails the test."""
    path.write_bytes(data)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS * 5)  # a hang ends the case (the limit is checked below)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        info = read_gguf_info(path)
        for prop in ("architecture", "is_projector", "projector_type", "text_embedding_length", "projection_dim",
                     "context_length", "name"):
            getattr(info, prop)
        outcome = "ok"
    except ModelError as exc:
        assert exc.exit_code == 4 and "\n" not in str(exc)
        outcome = "refused"
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert elapsed < CASE_SECONDS, f"{elapsed:.2f} s for one header"
    assert peak < CASE_MEMORY, f"{peak / 2**20:.1f} MiB for one header"
    return outcome


@st.composite
def values(draw: st.DrawFn, vtype: int) -> bytes:
    if vtype in SCALAR_FORMATS:
        size = struct.calcsize(SCALAR_FORMATS[vtype])
        return draw(st.binary(min_size=size, max_size=size))
    if vtype == 8:
        text = draw(st.binary(max_size=24))
        return gguf_string(text, draw(st.one_of(st.just(None), u64)))
    if vtype == 9:
        itype = draw(st.one_of(st.integers(0, 13), u32))
        count = draw(st.one_of(st.integers(0, 80), u64))
        items = b"".join(draw(st.lists(values(itype if itype != 9 else 0), max_size=min(count, 70))))
        return struct.pack("<IQ", itype, count) + items + draw(st.binary(max_size=8))
    return draw(st.binary(max_size=16))


@st.composite
def key_values(draw: st.DrawFn) -> bytes:
    key = draw(st.one_of(st.sampled_from([b"general.architecture", b"general.alignment", b"llama.embedding_length",
                                          b"clip.vision.projection_dim", b"general.name"]), st.binary(max_size=16)))
    vtype = draw(st.one_of(st.integers(0, 13), u32))
    return gguf_string(key, draw(st.one_of(st.just(None), u64))) + struct.pack("<I", vtype) + draw(values(vtype))


@st.composite
def tensor_infos(draw: st.DrawFn) -> bytes:
    name = draw(st.binary(max_size=70))
    dims = draw(st.lists(i64, max_size=6))
    n_dims = draw(st.one_of(st.just(len(dims)), u32))
    return (gguf_string(name, draw(st.one_of(st.just(None), u64))) + struct.pack("<I", n_dims)
            + b"".join(struct.pack("<q", d) for d in dims)
            + struct.pack("<IQ", draw(st.one_of(st.integers(0, 45), u32)), draw(u64)))


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    g = Gguf(kvs=draw(st.lists(key_values(), max_size=8)), tensors=draw(st.lists(tensor_infos(), max_size=6)),
             data=draw(st.binary(max_size=512)), version=draw(st.one_of(st.sampled_from([2, 3]), u32)),
             magic=draw(st.sampled_from([b"GGUF", b"GGUF", b"GGUF", b"GGML", b"\0\0\0\0"])))
    g.n_kv = draw(st.one_of(st.just(None), u64))
    g.n_tensors = draw(st.one_of(st.just(None), u64))
    data = g.to_bytes()
    return data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


class ToyFiles(dict):  # type: ignore[type-arg]
    """name -> (bytes, where the header ends); a short repr, so that a failing case prints readably."""

    def __repr__(self) -> str:
        return f"ToyFiles({sorted(self)})"


@pytest.fixture(scope="module")
def toy_files(scripted) -> ToyFiles:
    """The toy pair's bytes and where each one's header ends (the mutations aim there)."""
    import gguf

    pair = (scripted.model, scripted.mmproj)
    return ToyFiles({p.name: (p.read_bytes(), gguf.GGUFReader(p).data_offset) for p in pair})


@pytest.fixture(scope="module")
def case_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "case.gguf"


OUTCOMES: dict[str, dict[str, int]] = {"headers": {}, "mutations": {}}


def _count(kind: str, outcome: str) -> None:
    OUTCOMES[kind][outcome] = OUTCOMES[kind].get(outcome, 0) + 1


@FUZZ
@given(data=headers())
def test_fuzzed_headers(case_file, data):
    _count("headers", check_case(case_file, data))


def mutate(draw: st.DrawFn, data: bytes, header_end: int) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not buf:
            break
        at = draw(st.integers(0, max(0, min(len(buf), header_end) - 1)))
        kind = draw(st.sampled_from(["flip", "byte", "u64", "u32", "cut", "insert", "delete"]))
        if kind == "flip":
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            buf[at] = draw(st.integers(0, 255))
        elif kind in ("u64", "u32"):
            width = 8 if kind == "u64" else 4
            buf[at:at + width] = draw(st.integers(0, 2 ** (8 * width) - 1) | st.sampled_from(
                [b for b in BOUNDARIES if b < 2 ** (8 * width)])).to_bytes(width, "little")
        elif kind == "cut":
            del buf[draw(st.integers(0, len(buf))):]
        elif kind == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del buf[at:at + draw(st.integers(1, 16))]
    return bytes(buf)


@FUZZ
@given(choice=st.data())
def test_mutated_toy_models(toy_files, case_file, choice):
    name = choice.draw(st.sampled_from(sorted(toy_files)))
    data, header_end = toy_files[name]
    _count("mutations", check_case(case_file, mutate(choice.draw, data, header_end)))


def test_report_fuzz_counts(request):
    """Prints what the two fuzz tests saw (run with -s); fails if they accepted nothing at all."""
    print(f"\nfuzz ({EXAMPLES} examples per test): {OUTCOMES}")
    if OUTCOMES["mutations"]:
        assert OUTCOMES["mutations"].get("ok", 0) + OUTCOMES["mutations"].get("refused", 0) > 0
