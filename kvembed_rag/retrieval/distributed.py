"""Embedding beyond one process: Ray Data ``map_batches`` over an actor pool of KVEmbedders.

Install with ``pip install "kvembed-rag[ray]"``. Each actor loads the model once and embeds many batches;
on GPU clusters each actor takes one GPU, on CPUs a number of cores. Results are written as Parquet
shards of ``id, vector`` (float32 list) plus ``text`` and JSON ``metadata``; a FAISS index is then built
from the shards (exact for small corpora, or any FAISS factory such as ``"IVF4096,PQ64"`` or
``"HNSW32"``, trained on a sample of the shards) without Ray.

Failures: actors are restarted and their batches retried by Ray (``max_restarts``/``max_task_retries``),
and each output row is keyed by its id, so a killed worker neither loses nor duplicates rows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import KVEmbedConfig, coerce_config
from ..prompts import Role
from .vector_index import VectorIndex

logger = logging.getLogger(__name__)


def _require_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError('distributed embedding needs Ray Data: pip install "kvembed-rag[ray]"') from exc
    return ray


class EmbedBatch:
    """Ray Data callable class: one KVEmbedder per actor, reused for every batch."""

    def __init__(self, config: dict[str, Any], role: Role = "document") -> None:
        from ..config import KVEmbedConfig
        from ..embedder import KVEmbedder

        # a plain dict travels to the actors; each rebuilds the same configuration
        self.embedder = KVEmbedder.from_pretrained(KVEmbedConfig.from_dict(config))
        self.role = role

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        texts = [str(t) for t in batch["text"]]
        vectors = self.embedder.encode(texts, role=self.role)  # (n, dim) float32
        return {
            "id": np.asarray([str(i) for i in batch["id"]], dtype=object),
            "vector": list(vectors),
            "text": np.asarray(texts, dtype=object),
            "metadata": np.asarray(batch.get("metadata", [json.dumps({})] * len(texts)), dtype=object),
        }


def read_dataset(source: Any, *, text_field: str = "text", id_field: str = "id") -> Any:
    """A Ray Dataset with ``id, text, metadata`` columns from a Dataset, JSONL/Parquet paths, or rows."""
    ray = _require_ray()
    if isinstance(source, ray.data.Dataset):
        dataset = source
    elif isinstance(source, (str, os.PathLike)) or (
        isinstance(source, Sequence) and source and isinstance(source[0], (str, os.PathLike))
    ):
        paths = [os.fspath(p) for p in ([source] if isinstance(source, (str, os.PathLike)) else source)]
        if all(p.endswith(".parquet") or Path(p).is_dir() for p in paths):
            dataset = ray.data.read_parquet(paths)
        else:
            dataset = ray.data.read_json(paths, lines=True)
    else:
        dataset = ray.data.from_items(list(source))

    def normalise(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if text_field not in batch or id_field not in batch:
            raise ValueError(f"rows need {id_field!r} and {text_field!r} fields; got {sorted(batch)}")
        extra = [k for k in batch if k not in (text_field, id_field, "metadata")]
        n = len(batch[text_field])
        if "metadata" in batch:
            metadata = [m if isinstance(m, str) else json.dumps(m, default=str) for m in batch["metadata"]]
        else:
            metadata = [json.dumps({k: _plain(batch[k][i]) for k in extra}, default=str) for i in range(n)]
        return {
            "id": np.asarray([str(v) for v in batch[id_field]], dtype=object),
            "text": np.asarray([str(v) for v in batch[text_field]], dtype=object),
            "metadata": np.asarray(metadata, dtype=object),
        }

    return dataset.map_batches(normalise, batch_format="numpy")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def embed_dataset(
    source: Any,
    out_dir: str | Path,
    *,
    model: str = "default",
    options: dict[str, Any] | None = None,
    config: KVEmbedConfig | dict[str, Any] | None = None,
    workers: int = 2,
    batch_size: int = 64,
    num_gpus: float | None = None,
    cpus_per_worker: float | None = None,
    text_field: str = "text",
    id_field: str = "id",
    address: str | None = None,
    worker: type[EmbedBatch] | None = None,
) -> Path:
    """Embed ``source`` with ``workers`` actors and write Parquet shards of ``id, vector, text, metadata``.

    The embedder is ``config`` (a :class:`KVEmbedConfig` or its dict), or ``model`` with ``options``. ``worker``
    replaces the actor class (a subclass of :class:`EmbedBatch`, e.g. one that also writes a log or a metric).

    ``num_gpus=1`` gives each actor a GPU; otherwise each takes ``cpus_per_worker`` cores (default: the
    cluster's CPUs divided among the workers). ``address`` connects to a running cluster (``"auto"``,
    ``"ray://head:10001"``); without it a local cluster is started if none is.
    """
    ray = _require_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    if config is None:
        resolved = coerce_config(None, model=model, **(options or {}))
    else:
        resolved = coerce_config(config, **(options or {}))
    if cpus_per_worker is None and not num_gpus:
        # leave one CPU for reading and writing: actors that hold every CPU starve those tasks (a deadlock)
        cpus = float(ray.cluster_resources().get("CPU", 1))
        cpus_per_worker = max(0.25, (cpus - 1) / max(workers, 1))
    dataset = read_dataset(source, text_field=text_field, id_field=id_field)
    embedded = dataset.map_batches(
        worker or EmbedBatch,
        fn_constructor_kwargs={"config": resolved.portable().to_dict()},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=workers,
        num_gpus=num_gpus,
        num_cpus=cpus_per_worker,
        # a killed actor comes back and its batch runs again: Ray Data's actor pools default to
        # max_restarts=-1 and max_task_retries=-1 (passing them would be the deprecated ray_remote_args)
    )
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    embedded.write_parquet(str(folder))
    return folder


def read_shards(shards_dir: str | Path) -> Any:
    """Iterate ``(ids, vectors, texts, metadatas)`` per Parquet shard, without Ray."""
    import pyarrow.parquet as pq

    files = sorted(Path(shards_dir).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet shards in {shards_dir}")
    for file in files:
        table = pq.read_table(file)
        ids = [str(v) for v in table.column("id").to_pylist()]
        vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
        texts = table.column("text").to_pylist()
        metadatas = [json.loads(m) if m else {} for m in table.column("metadata").to_pylist()]
        yield ids, vectors, texts, metadatas


def index_from_shards(
    shards_dir: str | Path,
    *,
    factory: str = "Flat",
    embedder: dict[str, Any] | None = None,
    train_size: int = 100_000,
) -> VectorIndex:
    """Merge the shards into one index; trainable factories (IVF, PQ) train on the first ``train_size`` rows."""
    shards = read_shards(shards_dir)
    first = next(shards)
    index = VectorIndex(first[1].shape[1], factory=factory, embedder=embedder)
    pending = [first]
    if not index.is_trained:  # gather a training sample before the first add
        sample = [first[1]]
        for shard in shards:
            pending.append(shard)
            sample.append(shard[1])
            if sum(len(s) for s in sample) >= train_size:
                break
        index.train(np.concatenate(sample))
    seen: set[str] = set()
    for ids, vectors, texts, metadatas in [*pending, *shards]:
        duplicates = seen.intersection(ids)
        if duplicates:
            raise ValueError(f"ids appear in more than one shard, e.g. {sorted(duplicates)[:3]}")
        seen.update(ids)
        index.upsert(ids, vectors, texts, metadatas)
    return index


def ray_encoder(
    config: KVEmbedConfig | dict[str, Any],
    work_dir: str | Path,
    *,
    workers: int = 2,
    address: str | None = None,
    num_gpus: float | None = None,
) -> Any:
    """An ``encode(texts) -> vectors`` for ``build_index`` that embeds each call's texts on a Ray cluster."""
    calls = 0

    def encode(texts: list[str]) -> np.ndarray:
        nonlocal calls
        calls += 1
        shards = Path(work_dir) / f"batch-{calls}"
        rows = [{"id": str(i), "text": text} for i, text in enumerate(texts)]
        embed_dataset(rows, shards, config=config, workers=workers, address=address, num_gpus=num_gpus)
        out = np.empty((len(texts), 0), dtype=np.float32)
        for ids, vectors, _, _ in read_shards(shards):
            if out.shape[1] == 0:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[[int(i) for i in ids]] = vectors
        import shutil

        shutil.rmtree(shards, ignore_errors=True)
        return out

    return encode


__all__ = ["EmbedBatch", "embed_dataset", "index_from_shards", "ray_encoder", "read_dataset", "read_shards"]
