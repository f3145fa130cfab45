"""Code written for sentence-transformers runs unchanged on a KVEmbedder; compact vectors end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kvembed_rag import VectorIndex, quantize_embeddings
from kvembed_rag.quantization import bytes_per_vector, calibration_ranges, unpack_binary


@pytest.fixture(scope="module")
def model(make_embedder):
    return make_embedder("llama")


def test_sentence_transformers_readme_usage(model):
    # sentence-transformers v3 README, verbatim apart from the model
    sentences = [
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
    ]
    embeddings = model.encode(sentences)
    assert embeddings.shape == (3, model.get_sentence_embedding_dimension())
    similarities = model.similarity(embeddings, embeddings)
    assert isinstance(similarities, torch.Tensor) and similarities.shape == (3, 3)
    assert torch.allclose(similarities.diagonal(), torch.ones(3), atol=1e-5)

    # sentence-transformers v5 README: queries and documents
    queries = ["Which planet is known as the Red Planet?"]
    documents = ["Venus is often called Earth's twin.", "Mars, known for its reddish appearance, is the Red Planet."]
    query_embeddings = model.encode_query(queries)
    document_embeddings = model.encode_document(documents)
    assert query_embeddings.shape == (1, model.dim) and document_embeddings.shape == (2, model.dim)
    scores = model.similarity(query_embeddings, document_embeddings)
    assert scores.shape == (1, 2)
    np.testing.assert_allclose(scores.numpy(), query_embeddings @ document_embeddings.T, atol=1e-5)


def test_encode_keywords_of_sentence_transformers(model):
    texts = ["alpha", "beta gamma", "delta"]
    reference = model.encode(texts, prompt_name="query")
    np.testing.assert_allclose(model.encode(texts, "query"), reference, atol=1e-6)  # today's positional role
    np.testing.assert_allclose(model.encode(texts, role="query"), reference, atol=1e-6)
    np.testing.assert_allclose(model.encode_queries(texts), reference, atol=1e-6)
    same = model.encode(
        texts,
        prompt_name="query",
        batch_size=2,
        show_progress_bar=False,
        normalize_embeddings=True,
        convert_to_numpy=True,
        device=str(model.device),
    )
    np.testing.assert_allclose(same, reference, atol=1e-6)
    tensor = model.encode(texts, prompt_name="query", convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (3, model.dim)
    rows = model.encode(texts, convert_to_numpy=False)
    assert isinstance(rows, list) and all(isinstance(r, torch.Tensor) and r.shape == (model.dim,) for r in rows)
    assert model.encode("one text").shape == (model.dim,)
    assert model.encode("one text", convert_to_tensor=True).shape == (model.dim,)
    short = model.encode(texts, truncate_dim=16)
    assert short.shape == (3, 16) and np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    assert model.similarity_pairwise(reference, reference).shape == (3,)
    assert model.max_seq_length == model.max_length == model.get_max_seq_length()
    assert model.similarity_fn_name == "cosine"
    with pytest.raises(ValueError, match="disagree"):
        model.encode(texts, "query", prompt_name="document")
    with pytest.raises(ValueError, match="unknown role"):
        model.encode(texts, prompt_name="classification")
    with pytest.raises(TypeError, match="unexpected keyword"):
        model.encode(texts, no_such_option=1)
    with pytest.raises(ValueError, match="precision"):
        model.encode(texts, precision="int4")
    with pytest.raises(AttributeError):
        model.max_seq_length = 12  # type: ignore[misc]


def test_quantize_embeddings_matches_sentence_transformers_semantics(model):
    vectors = model.encode([f"text number {i}" for i in range(40)])
    ranges = calibration_ranges(vectors)
    int8 = quantize_embeddings(vectors, "int8", calibration_embeddings=vectors)
    assert int8.dtype == np.int8 and int8.shape == vectors.shape
    np.testing.assert_array_equal(int8, quantize_embeddings(vectors, "int8", ranges=ranges))
    assert int8.min() == -128 and int8.max() == 127  # the calibrated extremes hit both ends
    uint8 = quantize_embeddings(vectors, "uint8", ranges=ranges)
    np.testing.assert_array_equal(uint8.astype(np.int16) - 128, int8)
    # the ST formula on in-range values: (x - min) / ((max - min) / 255) - 128
    steps = (ranges[1] - ranges[0]) / 255
    np.testing.assert_array_equal(int8, np.clip(np.floor((vectors - ranges[0]) / steps), 0, 255) - 128)
    ubinary = quantize_embeddings(vectors, "ubinary")
    assert ubinary.dtype == np.uint8 and ubinary.shape == (40, model.dim // 8)
    np.testing.assert_array_equal(ubinary, np.packbits(vectors > 0, axis=-1))
    binary = quantize_embeddings(vectors, "binary")
    np.testing.assert_array_equal(binary.astype(np.int16), ubinary.astype(np.int16) - 128)
    signs = unpack_binary(binary, model.dim)
    np.testing.assert_allclose(signs * np.sqrt(model.dim), np.where(vectors > 0, 1.0, -1.0))
    # encode(precision=...) is quantize_embeddings on the float vectors
    np.testing.assert_array_equal(model.encode([f"text number {i}" for i in range(40)], precision="ubinary"), ubinary)
    queries = model.encode(["text number 3"], precision="int8", ranges=ranges)
    np.testing.assert_array_equal(queries, int8[3:4])
    assert bytes_per_vector(model.dim, "binary") * 32 == bytes_per_vector(model.dim, "float32")
    out_of_range = quantize_embeddings(vectors * 3, "int8", ranges=ranges)  # clipped, never wrapped around
    assert np.array_equal(
        np.sign(out_of_range[vectors * 3 > ranges[1]]), np.ones_like(out_of_range[vectors * 3 > ranges[1]])
    )


@pytest.mark.parametrize("precision", ["int8", "binary"])
@pytest.mark.parametrize("factory", ["Flat", "HNSW16"])
def test_compact_indexes_end_to_end(model, precision, factory, tmp_path):
    texts = [f"document {i} about topic {i % 7}" for i in range(120)]
    vectors = model.encode(texts)
    ids = [f"d{i}" for i in range(120)]
    index = VectorIndex(model.dim, factory=factory, precision=precision, embedder=model.describe())
    index.upsert(ids, vectors, texts, [{"topic": i % 7} for i in range(120)])
    top = index.search(vectors[:5], 3)
    assert [row[0].id for row in top] == ids[:5]  # every vector finds itself first
    assert all(-1.0 <= hit.score <= 1.001 for row in top for hit in row)
    filtered = index.search(vectors[3], 5, filter={"topic": 3})[0]
    assert filtered[0].id == "d3" and all(hit.metadata["topic"] == 3 for hit in filtered)
    floats = dict(zip(ids, vectors, strict=True))
    rescored = index.search(vectors[:5], 3, rescore=floats, rescore_multiplier=4)
    exact = VectorIndex(model.dim)
    exact.upsert(ids, vectors)
    assert rescored[0][0].score == pytest.approx(1.0, abs=1e-5)
    rescored_fn = index.search(vectors[:2], 3, rescore=exact.vectors)
    assert [h.id for h in rescored_fn[0]] == [h.id for h in rescored[0]]
    index.delete(["d0", "d1"])
    index.compact()
    index.save(tmp_path / "idx")
    manifest = (tmp_path / "idx" / "manifest.json").read_text()
    assert f'"precision": "{precision}"' in manifest
    loaded = VectorIndex.load(tmp_path / "idx", embedder=model.describe())
    assert loaded.precision == precision and len(loaded) == 118
    assert loaded.search(vectors[5], 1)[0][0].id == "d5"
    index_bytes = (tmp_path / "idx" / next(p.name for p in (tmp_path / "idx").glob("index-*.faiss"))).stat().st_size
    assert index_bytes < 118 * model.dim * 4 or factory != "Flat"  # smaller than float32 codes


def test_compact_index_argument_errors(model):
    with pytest.raises(ValueError, match="precision must be one of"):
        VectorIndex(64, precision="int4")
    with pytest.raises(ValueError, match="multiple of 8"):
        VectorIndex(60, precision="binary")
    with pytest.raises(ValueError, match="no binary FAISS index"):
        VectorIndex(64, precision="binary", factory="PQ8")
    index = VectorIndex(64, precision="int8")
    index.upsert(["a"], np.ones((1, 64), np.float32))
    with pytest.raises(ValueError, match="rescore returned shape"):
        index.search(np.ones(64, np.float32), 1, rescore=lambda ids: np.ones((len(ids), 3)))
