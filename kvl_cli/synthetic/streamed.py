"""Random but valid quantized tensors, written one at a time after the header, so that an 11 GB
model never sits in memory."""

from __future__ import annotations

from typing import Any

import numpy as np


def random_blocks(rng: np.random.Generator, qtype: Any, n_values: int) -> np.ndarray:
    """Random but valid blocks of ``qtype``: finite f16 scales, weights of magnitude ~0.02."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = n_values // block
    data = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    q = gguf.GGMLQuantizationType
    # where each type keeps its f16 scale(s) in a block, and their value
    scales = {q.Q4_K: ((0, 2e-5), (2, 2e-5)), q.Q6_K: ((208, 1e-5),), q.Q5_0: ((0, 2e-3),), q.Q8_0: ((0, 2e-4),)}
    if qtype not in scales:
        raise ValueError(f"no random blocks for {qtype}")
    for offset, value in scales[qtype]:
        data[:, offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)
    return data


class StreamedTensors:
    """Tensor specs now, data later: header first, then one tensor at a time."""

    def __init__(self, seed: int) -> None:
        self.specs: list[tuple[str, tuple[int, ...], Any]] = []
        self.rng = np.random.default_rng(seed)

    def add(self, name: str, shape: tuple[int, ...], qtype: Any) -> None:
        self.specs.append((name, shape, qtype))

    def nbytes(self, shape: tuple[int, ...], qtype: Any) -> int:
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[qtype]
        return int(np.prod(shape)) // block * size

    def data(self, shape: tuple[int, ...], qtype: Any, fill: float | None) -> np.ndarray:
        import gguf

        q = gguf.GGMLQuantizationType
        n = int(np.prod(shape))
        if qtype == q.F32:
            if fill is not None:
                return np.full(shape, fill, np.float32)
            return (self.rng.standard_normal(shape) * 0.02).astype(np.float32)
        if qtype == q.F16:
            return (self.rng.standard_normal(shape) * 0.02).astype(np.float16)
        return random_blocks(self.rng, qtype, n)

    def write(self, w: Any, fills: dict[str, float]) -> None:
        """Header, keys and tensor table, then each tensor's data; ``fills``: name suffix -> constant (F32)."""
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
