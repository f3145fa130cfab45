"""Compact vectors: int8/uint8 scalar quantisation and 1-bit (binary) packing, as sentence-transformers does.

``quantize_embeddings`` follows ``sentence_transformers.quantization.quantize_embeddings``:

- ``"int8"`` / ``"uint8"``: each dimension's ``[min, max]`` range (from ``ranges``, else from
  ``calibration_embeddings``, else from ``embeddings`` themselves) is cut into 256 equal buckets. Calibrate on
  a sample of the corpus and reuse the same ranges for every later batch and for queries, or the buckets of
  two calls will not line up.
- ``"binary"`` / ``"ubinary"``: one bit per dimension (``value > 0``), packed 8 per byte with
  ``np.packbits``: ``dim / 8`` bytes per vector (``binary`` is the packed byte minus 128, as int8).

KV-Embedding vectors are unit-norm floats, so the sign bit keeps their direction coarsely; FAISS compares
binary vectors by Hamming distance (:class:`~kvembed_rag.retrieval.vector_index.VectorIndex`,
``precision="binary"``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Precision = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = ("float32", "float16", "int8", "uint8", "binary", "ubinary")


def calibration_ranges(embeddings: np.ndarray) -> np.ndarray:
    """``(2, dim)``: per-dimension minimum and maximum of ``embeddings`` (the int8/uint8 buckets' span)."""
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"calibration needs a non-empty (n, dim) matrix; got shape {matrix.shape}")
    return np.stack([matrix.min(axis=0), matrix.max(axis=0)])


def quantize_embeddings(
    embeddings: np.ndarray,
    precision: str,
    *,
    calibration_embeddings: np.ndarray | None = None,
    ranges: np.ndarray | None = None,
) -> np.ndarray:
    """``embeddings`` (``(n, dim)`` or ``(dim,)`` floats) in ``precision``; see the module docstring.

    Values outside the calibrated range are clipped into the first or last bucket (sentence-transformers
    lets them wrap around, which turns a large positive value into a large negative one).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    array = np.asarray(embeddings, dtype=np.float32)
    single = array.ndim == 1
    matrix = array[None, :] if single else array
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must be (n, dim) or (dim,); got shape {array.shape}")
    out: np.ndarray
    if precision == "float32":
        out = matrix
    elif precision == "float16":
        out = matrix.astype(np.float16)
    elif precision in ("int8", "uint8"):
        if ranges is None:
            ranges = calibration_ranges(matrix if calibration_embeddings is None else calibration_embeddings)
        ranges = np.asarray(ranges, dtype=np.float32)
        if ranges.shape != (2, matrix.shape[1]):
            raise ValueError(f"ranges must have shape (2, {matrix.shape[1]}) (min row, max row); got {ranges.shape}")
        starts = ranges[0]
        steps = (ranges[1] - ranges[0]) / 255.0
        steps = np.where(steps > 0, steps, 1.0)  # a constant dimension maps to bucket 0 instead of dividing by 0
        buckets = np.clip(np.floor((matrix - starts) / steps), 0, 255)
        out = (buckets - 128).astype(np.int8) if precision == "int8" else buckets.astype(np.uint8)
    else:
        packed = np.packbits(matrix > 0, axis=-1)
        out = (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    return out[0] if single else out


def unpack_binary(packed: np.ndarray, dim: int) -> np.ndarray:
    """``(n, dim)`` float32 ±1/√dim from ``ubinary`` (uint8) or ``binary`` (int8) packed bits: unit vectors whose
    inner product is ``1 - 2·hamming/dim``, the cosine of the two sign patterns."""
    array = np.asarray(packed)
    if array.dtype == np.int8:
        array = (array.astype(np.int16) + 128).astype(np.uint8)
    bits = np.unpackbits(np.atleast_2d(array), axis=-1)[:, :dim].astype(np.float32)
    return (bits * 2.0 - 1.0) / np.sqrt(dim, dtype=np.float32)


def bytes_per_vector(dim: int, precision: str) -> int:
    """Storage of one vector's codes (FAISS adds nothing per vector for flat indexes; ids are 8 bytes more)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if precision in ("binary", "ubinary"):
        return (dim + 7) // 8
    return dim * {"float32": 4, "float16": 2}.get(precision, 1)


__all__ = ["PRECISIONS", "Precision", "bytes_per_vector", "calibration_ranges", "quantize_embeddings", "unpack_binary"]
