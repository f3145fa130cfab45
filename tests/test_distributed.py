"""Ray Data embedding on a local 2-worker cluster (loopback only): equal vectors, complete ids, retries."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

from kvembed_rag import KVEmbedder  # noqa: E402
from kvembed_rag.retrieval.distributed import EmbedBatch, embed_dataset, index_from_shards, read_shards  # noqa: E402

# the fault-injecting worker below travels to Ray's actors by value (this test module is not importable there)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class KilledOnce(EmbedBatch):
    """Dies once, hard, on the first batch that sees the marker file: the actor pool must retry that batch."""

    def __call__(self, batch):
        marker = os.environ.get("KVEMBED_TEST_KILL_ONCE")
        if marker and os.path.exists(marker):
            try:
                os.remove(marker)
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        return super().__call__(batch)


pytestmark = pytest.mark.enable_socket  # Ray's processes talk over 127.0.0.1 only


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    temp = tmp_path_factory.mktemp("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(temp),
        runtime_env={"env_vars": {"KVEMBED_TEST_KILL_ONCE": str(temp / "kill-once")}},
    )
    yield temp
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rows = [
        {"id": f"doc-{i}", "text": f"document {i} " + "about retrieval " * (i % 7), "lang": "en" if i % 2 else "de"}
        for i in range(60)
    ]
    path = folder / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path, rows


def test_two_workers_match_one_process(local_cluster, corpus, checkpoints, tmp_path):
    path, rows = corpus
    model = str(checkpoints["llama"])
    out = embed_dataset(
        str(path), tmp_path / "shards", model=model, options={"max_length": 128}, workers=2, batch_size=8
    )
    ids, vectors, metadatas = [], [], []
    for shard_ids, shard_vectors, _, shard_meta in read_shards(out):
        ids += shard_ids
        vectors.append(shard_vectors)
        metadatas += shard_meta
    assert sorted(ids) == sorted(r["id"] for r in rows) and len(ids) == len(set(ids))  # complete, no duplicates
    local = KVEmbedder.from_pretrained(model, max_length=128)
    expected = local.encode_documents([r["text"] for r in rows])
    order = {r["id"]: i for i, r in enumerate(rows)}
    got = np.concatenate(vectors)
    assert np.abs(got - expected[[order[i] for i in ids]]).max() <= 1e-5
    assert {m["lang"] for m in metadatas} == {"en", "de"}  # extra fields travel as metadata
    index = index_from_shards(out, embedder=local.describe())
    assert len(index) == 60
    hit = index.search(local.encode_queries(rows[5]["text"]), k=1)[0][0]
    assert hit.metadata["lang"] in ("en", "de")


def test_killed_worker_is_retried_without_losing_or_duplicating_rows(local_cluster, corpus, checkpoints, tmp_path):
    path, rows = corpus
    (local_cluster / "kill-once").write_text("die")  # the first batch to see this file kills its actor
    out = embed_dataset(
        str(path),
        tmp_path / "shards",
        model=str(checkpoints["llama"]),
        options={"max_length": 128},
        workers=2,
        batch_size=8,
        worker=KilledOnce,
    )
    assert not (local_cluster / "kill-once").exists()  # the fault really happened
    ids = [i for shard_ids, *_ in read_shards(out) for i in shard_ids]
    assert sorted(ids) == sorted(r["id"] for r in rows) and len(ids) == len(set(ids))


def test_ivf_index_from_shards(local_cluster, corpus, checkpoints, tmp_path):
    path, _ = corpus
    out = embed_dataset(
        str(path),
        tmp_path / "shards",
        model=str(checkpoints["llama"]),
        options={"max_length": 128},
        workers=1,
        batch_size=16,
    )
    index = index_from_shards(out, factory="IVF2,Flat", train_size=60)
    assert len(index) == 60 and index.factory == "IVF2,Flat"


def test_missing_shards_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Parquet shards"):
        next(read_shards(tmp_path))


def test_rows_need_id_and_text(local_cluster, tmp_path, checkpoints):
    with pytest.raises(Exception, match="'id' and 'text'"):
        embed_dataset([{"body": "x", "key": "1"}], tmp_path / "s", model=str(checkpoints["llama"]), workers=1)


def test_index_command_with_the_ray_engine(local_cluster, corpus, checkpoints, tmp_path, capsys):
    from kvembed_rag.cli import main
    from kvembed_rag.retrieval.vector_index import VectorIndex

    path, rows = corpus
    argv = [
        "index",
        str(path),
        "--out",
        str(tmp_path / "idx"),
        "--model",
        str(checkpoints["llama"]),
        "--max-length",
        "128",
        "--engine",
        "ray",
        "--workers",
        "2",
        "--json",
        "-q",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["embedded"] == 60
    local = KVEmbedder.from_pretrained(str(checkpoints["llama"]), max_length=128)
    index = VectorIndex.load(tmp_path / "idx")
    stored = index.vectors(["doc-3"])[0]
    assert np.abs(stored - local.encode_documents(rows[3]["text"])).max() <= 1e-5


def test_llama_index_ray_ingestion(local_cluster, checkpoints):
    ingestion = pytest.importorskip("llama_index.ingestion.ray", reason="llama-index-ingestion-ray not installed")
    from llama_index.core import Document
    from llama_index.embeddings.kvembed import KVEmbedding

    model = str(checkpoints["llama"])
    documents = [Document(text=f"meeting {i} about remote controls " * (1 + i % 3), doc_id=f"m{i}") for i in range(12)]
    pipeline = ingestion.RayIngestionPipeline(
        transformations=[
            ingestion.RayTransformComponent(
                KVEmbedding,
                transform_kwargs={"model_name": model, "max_length": 128},
                map_batches_kwargs={"batch_size": 4, "concurrency": 2, "num_cpus": 0.5},
            )
        ]
    )
    nodes = pipeline.run(documents=documents)
    assert sorted(n.node_id for n in nodes) == sorted(d.doc_id for d in documents)
    local = KVEmbedding(model_name=model, max_length=128)
    for node in nodes[:3]:
        expected = local.get_text_embedding(node.get_content(metadata_mode="embed"))
        assert np.abs(np.asarray(node.embedding) - expected).max() <= 1e-5
