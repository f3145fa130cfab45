"""On-disk embedding cache for evaluations, keyed by what determines the vectors.

A dataset's vectors are stored once per embedder configuration (:meth:`KVEmbedder.describe`, minus the
package version), role and exact list of texts, so a report that adds one method recomputes only that one.
Files are written to a temporary name and renamed, so an interrupted run never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import cache_root, write_bytes_atomically, write_json_atomically
from ..errors import TruncationWarning


@dataclass
class EncodeStats:
    """What one encode cost when it was computed (kept with the cached vectors)."""

    seconds: float = 0.0
    tokens: int = 0
    truncated: int = 0
    cached: bool = False

    def add(self, other: EncodeStats) -> None:
        self.seconds += other.seconds
        self.tokens += other.tokens
        self.truncated += other.truncated
        self.cached = self.cached and other.cached


#: ``(label, texts_done, texts_total, tokens_done, tokens_total)``
BatchProgress = Callable[[str, int, int, int, int], None]


class EmbeddingCache:
    """``root/<fingerprint>/<role>-<texts digest>.npy`` plus a ``.json`` with the cost; ``root=None`` disables."""

    def __init__(self, root: str | Path | None = "default", *, progress: BatchProgress | None = None) -> None:
        self.root = None if root is None else (cache_root() / "eval" if root == "default" else Path(root))
        #: ``progress(label, texts_done, texts_total, tokens_done, tokens_total)`` per batch of a computed encode
        self.progress = progress

    def _paths(self, embedder: Any, texts: list[str], role: str) -> tuple[Path, Path]:
        digest = hashlib.sha256()
        for text in texts:
            digest.update(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
        assert self.root is not None
        stem = self.root / embedder.fingerprint / f"{role}-{len(texts)}-{digest.hexdigest()[:24]}"
        return stem.with_suffix(".npy"), stem.with_suffix(".json")

    def encode(self, embedder: Any, texts: list[str], role: str) -> tuple[np.ndarray, EncodeStats]:
        """Vectors ``(n, dim)`` for ``texts`` as ``role``, from the cache when present."""
        if self.root is None:
            return self._compute(embedder, texts, role)
        from ..artifacts import cached_artifact

        vectors_path, stats_path = self._paths(embedder, texts, role)

        def read(path: Path) -> tuple[np.ndarray, EncodeStats]:
            vectors = np.load(path)
            stats = EncodeStats(**json.loads(stats_path.read_text()), cached=True)
            if vectors.shape != (len(texts), embedder.dim):
                raise ValueError(f"shape {vectors.shape}, not {(len(texts), embedder.dim)}")
            return vectors, stats

        found, _ = cached_artifact(
            "eval",
            None,
            suffix=".npy",
            path=vectors_path,
            read=read,
            write=lambda path, value: _atomic_save(path, stats_path, *value),
            compute=lambda: self._compute(embedder, texts, role),
        )
        return found

    def _compute(self, embedder: Any, texts: list[str], role: str) -> tuple[np.ndarray, EncodeStats]:
        encoded = embedder.tokenize(texts, role) if texts else []
        tokens = sum(len(item.ids) for item in encoded)
        truncated = sum(1 for item in encoded if item.truncated_by)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)  # counted in the stats instead
            if not texts:
                vectors = np.zeros((0, embedder.dim), np.float32)
            elif self.progress is None:
                vectors = embedder.encode(texts, role)
            else:
                report = self.progress
                label = f"{getattr(embedder, 'method', 'encode')} {role}s @{getattr(embedder, 'max_length', '?')}"
                report(label, 0, len(texts), 0, tokens)
                vectors = embedder.encode(
                    texts, role, on_batch=lambda done, done_tokens: report(label, done, len(texts), done_tokens, tokens)
                )
        return vectors, EncodeStats(time.perf_counter() - start, tokens, truncated)


def _atomic_save(vectors_path: Path, stats_path: Path, vectors: np.ndarray, stats: EncodeStats) -> None:
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    write_bytes_atomically(vectors_path, buffer.getvalue())
    write_json_atomically(stats_path, {"seconds": stats.seconds, "tokens": stats.tokens, "truncated": stats.truncated})
