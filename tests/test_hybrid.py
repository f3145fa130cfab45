"""Hybrid retrieval: the BM25 store beside the FAISS index (pickle-free, checked on load) and the fusion."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kvembed_rag.errors import ConfigError, IndexCorruptError
from kvembed_rag.retrieval.lexical import (
    REFERENCE_BM25,
    BM25Params,
    BM25Store,
    HybridConfig,
    candidate_union,
    feedback_query,
    fuse,
    hybrid_order,
    tokenize,
    with_document_prior,
)
from kvembed_rag.retrieval.vector_index import DOCUMENT_KEYS, VectorIndex

TEXTS = [
    "The quarterly budget was approved by the finance committee.",
    "We discussed the remote control design and its buttons.",
    "Marketing wants a fruit-shaped remote in bright yellow.",
    "The microphone array picked up breath noise again.",
    "Budget cuts mean fewer prototypes this quarter.",
    "Speech recognition errors rise with overlapping speakers.",
]


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def _index(hybrid: object = "rrf:0.5") -> VectorIndex:
    index = VectorIndex(16, hybrid=hybrid)  # type: ignore[arg-type]
    index.upsert([f"d{i}" for i in range(len(TEXTS))], _vectors(len(TEXTS)), TEXTS, [{"n": i} for i in range(6)])
    return index


def test_tokenizer_and_bm25_scores_prefer_the_matching_texts() -> None:
    assert tokenize("The Budget, the BUDGET: a cut!") == ["budget", "budget", "cut"]
    store = BM25Store()
    store.upsert([10, 11, 12], TEXTS[:3])
    labels, scores = store.scores("budget committee")
    assert labels.tolist() == [10, 11, 12] and scores[0] > 0 and scores[1] == scores[2] == 0
    assert not store.scores("the of and")[1].any()  # stop words only: no evidence either way


def _lucene_by_hand(texts: list[str], query: str, k1: float, b: float) -> np.ndarray:
    """BM25 as Lucene scores it: ``idf * tf / (tf + k1 (1 - b + b |d| / avg|d|))``, summed over the query's words."""
    docs = [tokenize(t) for t in texts]
    average = np.mean([len(d) for d in docs])
    out = np.zeros(len(docs))
    for word in tokenize(query):
        df = sum(word in d for d in docs)
        idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        for j, d in enumerate(docs):
            tf = d.count(word)
            out[j] += idf * tf / (tf + k1 * (1 - b + b * len(d) / average))
    return out


@pytest.mark.parametrize("params", [BM25Params(), REFERENCE_BM25, BM25Params(k1=0.9, b=1.0)])
def test_bm25_scores_follow_the_parameters_by_hand(params: BM25Params) -> None:
    store = BM25Store(params)
    store.upsert(list(range(len(TEXTS))), TEXTS)
    for query in ("budget quarter prototypes", "remote remote design yellow", "speech noise"):
        expected = _lucene_by_hand(TEXTS, query, params.k1, params.b)
        assert store.scores(query)[1] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_bm25_params_defaults_parsing_and_errors() -> None:
    assert (BM25Params().k1, BM25Params().b, BM25Params().method) == (2.0, 0.5, "lucene")  # the shipped ones
    assert (REFERENCE_BM25.k1, REFERENCE_BM25.b) == (1.2, 0.75)  # the textbook reference row
    assert BM25Params.parse(None) == BM25Params() and BM25Params.parse(REFERENCE_BM25) is REFERENCE_BM25
    assert BM25Params.parse("k1=1.2, b=0.75") == REFERENCE_BM25 and BM25Params.parse("b=0.3") == BM25Params(b=0.3)
    for params in (BM25Params(), REFERENCE_BM25, BM25Params(k1=1.5, b=0.6, method="bm25+")):
        assert BM25Params.parse(params.label()) == params
    assert BM25Params().label() == "k1=2,b=0.5"
    for bad, message in (
        ("k1=-1", "k1 must be"),
        ("b=1.5", "b must be between"),
        ("method=tfidf", "method must be one of"),
        ("k1:2", "look like"),
        ("k2=1", "look like"),
        ("k1=lots", "must be a number"),
    ):
        with pytest.raises(ConfigError, match=message):
            BM25Params.parse(bad)


def test_an_index_keeps_the_bm25_parameters_it_was_built_with(tmp_path: Path) -> None:
    reference = VectorIndex(16, hybrid=True, bm25="k1=1.2,b=0.75")
    reference.upsert(["a", "b", "c"], _vectors(3), TEXTS[:3])
    reference.save(tmp_path / "old")
    loaded = VectorIndex.load(tmp_path / "old")  # as an index saved before the defaults changed
    assert loaded.lexical is not None and loaded.lexical.params == REFERENCE_BM25
    assert VectorIndex(16, hybrid=True).lexical.params == BM25Params()  # type: ignore[union-attr]
    loaded.enable_hybrid("weighted:1")  # another fusion: the parameters stay
    assert loaded.lexical.params == REFERENCE_BM25
    loaded.enable_hybrid("weighted:1", bm25="k1=0.9,b=1")  # asked for: re-scored from the stored tokens
    expected = _lucene_by_hand(TEXTS[:3], "budget committee remote", 0.9, 1.0)
    assert loaded.lexical.scores("budget committee remote")[1] == pytest.approx(expected, rel=1e-5)
    loaded.save(tmp_path / "old")
    assert VectorIndex.load(tmp_path / "old").lexical.params == BM25Params(k1=0.9, b=1.0)  # type: ignore[union-attr]
    store = BM25Store(REFERENCE_BM25)
    store.upsert([0], ["budget"])
    with np.load(io.BytesIO(store.to_bytes()), allow_pickle=False) as arrays:
        fields = {name: arrays[name] for name in arrays.files}
    fields["params"] = np.asarray(json.dumps({**json.loads(str(fields["params"])), "b": 7.5}))
    buffer = io.BytesIO()
    np.savez(buffer, **fields)
    with pytest.raises(IndexCorruptError, match="not valid"):  # a stored b out of range is damage, not a setting
        BM25Store.from_bytes(buffer.getvalue())


def test_fusion_weights_zero_and_one_are_the_two_rankings() -> None:
    dense, lexical = np.array([0.9, 0.5, 0.1, 0.7]), np.array([0.0, 3.0, 1.0, 0.5])
    for fusion in ("rrf", "weighted"):
        assert np.argsort(-fuse(dense, lexical, fusion=fusion, weight=0.0)).tolist() == [0, 3, 1, 2]
        assert np.argsort(-fuse(dense, lexical, fusion=fusion, weight=1.0)).tolist() == [1, 2, 3, 0]
    # RRF by hand: ranks dense [1, 3, 4, 2], BM25 [4, 1, 2, 3]
    assert fuse(dense, lexical, weight=0.5)[0] == pytest.approx(0.5 / 61 + 0.5 / 64)
    assert candidate_union(dense, lexical, 1).tolist() == [0, 1]  # each side's top 1 enters the fusion
    positions, fused = hybrid_order(dense, lexical, HybridConfig("rrf", 0.5, candidates=1), k=1)
    assert positions.tolist() == [0] and fused[0] == pytest.approx(0.5 / 61 + 0.5 / 62)


def test_hybrid_config_parsing_and_errors() -> None:
    assert HybridConfig.parse("weighted:0.3") == HybridConfig("weighted", 0.3)
    assert HybridConfig().feedback == 5 and HybridConfig.parse(HybridConfig().label()) == HybridConfig()
    assert HybridConfig.parse(True) == HybridConfig() and HybridConfig.parse(False) is None
    with pytest.raises(ConfigError, match="fusion must be one of"):
        HybridConfig.parse("mean")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        HybridConfig.parse("rrf:1.5")
    with pytest.raises(ConfigError, match=r"METHOD\[:WEIGHT\]"):
        HybridConfig.parse("rrf:lots")
    fed = HybridConfig.parse("weighted:0.5+feedback:5")
    assert fed == HybridConfig("weighted", 0.5, feedback=5) and HybridConfig.parse(fed.label()) == fed
    assert HybridConfig.parse("rrf+feedback:0") == HybridConfig("rrf", feedback=0)
    both = HybridConfig.parse("rrf:0.3+document:0.25+feedback:2")  # the options in any order
    assert both == HybridConfig("rrf", 0.3, feedback=2, document_prior=0.25)
    assert HybridConfig.parse(both.label()) == both
    assert HybridConfig().document_prior == 0.5 and HybridConfig.parse("weighted+document:0").document_prior == 0
    for bad in ("weighted+document:lots", "weighted+document:1+document:2", "weighted+document:inf", "weighted+doc:1"):
        with pytest.raises(ConfigError):
            HybridConfig.parse(bad)
    for bad in ("weighted:0.5+feedback", "weighted:0.5+feedback:-1", "weighted:0.5+rm3:5"):
        with pytest.raises(ConfigError, match=r"\+feedback:N"):
            HybridConfig.parse(bad)
    with pytest.raises(ConfigError, match="feedback is how many"):
        HybridConfig(feedback=-1)
    with pytest.raises(ConfigError, match="feedback_weight"):
        HybridConfig(feedback_weight=-0.5)


def test_feedback_query_moves_the_unit_query_towards_the_passages_mean() -> None:
    query, passages = np.array([2.0, 0.0]), np.array([[0.0, 3.0], [0.0, 1.0]])
    np.testing.assert_allclose(feedback_query(query, passages, 0.0), [1.0, 0.0])
    np.testing.assert_allclose(feedback_query(query, passages[:0], 1.0), [1.0, 0.0])  # nothing fed back
    np.testing.assert_allclose(feedback_query(query, passages, 1.0), [2**-0.5, 2**-0.5], rtol=1e-6)


def test_feedback_with_weight_zero_is_the_plain_hybrid_and_survives_a_save(tmp_path: Path) -> None:
    plain, fed = _index("weighted:0.5+feedback:0"), _index({"fusion": "weighted", "weight": 0.5, "feedback": 3})
    queries, texts = _vectors(4, seed=5), ["budget", "remote yellow", "speech noise", "quarter"]
    expected = [[h.id for h in row] for row in plain.search_hybrid(queries, texts, k=4)]
    still = fed.search_hybrid(queries, texts, k=4, hybrid=HybridConfig("weighted", 0.5, feedback=3, feedback_weight=0))
    assert [[h.id for h in row] for row in still] == expected
    moved = [[h.id for h in row] for row in fed.search_hybrid(queries, texts, k=4)]
    assert moved != expected  # feedback changes some ranking on random vectors
    fed.save(tmp_path / "fed")
    loaded = VectorIndex.load(tmp_path / "fed")
    assert loaded.hybrid == HybridConfig("weighted", 0.5, feedback=3)
    assert [[h.id for h in row] for row in loaded.search_hybrid(queries, texts, k=4)] == moved


@pytest.mark.parametrize("fusion", ["rrf", "weighted"])
def test_hybrid_with_weight_zero_equals_dense(fusion: str) -> None:
    index = _index(f"{fusion}:0+feedback:0")
    queries = _vectors(5, seed=1)
    dense = index.search(queries, k=4)
    hybrid = index.search_hybrid(queries, ["budget quarter"] * 5, k=4)
    assert [[h.id for h in row] for row in hybrid] == [[h.id for h in row] for row in dense]
    # with feedback (the default), weight 0 is the dense search from the query moved towards its top 2
    fed = index.search_hybrid(queries, ["budget quarter"] * 5, k=4, hybrid=f"{fusion}:0+feedback:2")
    for query, row, first in zip(queries, fed, dense, strict=True):
        moved = feedback_query(query, index.vectors([h.id for h in first[:2]]), 1.0)
        assert [h.id for h in row] == [h.id for h in index.search(moved, k=4)[0]]


def test_hybrid_finds_the_words_dense_misses_and_honours_filters() -> None:
    index = _index("weighted:1")
    hits = index.search_hybrid(_vectors(1, seed=2)[0], "budget", k=2)[0]
    assert {h.id for h in hits} == {"d0", "d4"}
    filtered = index.search_hybrid(_vectors(1, seed=2)[0], "budget", k=2, filter={"n": {"$ne": 0}})[0]
    assert filtered[0].id == "d4" and "d0" not in {h.id for h in filtered}


def test_bm25_follows_upserts_and_deletes() -> None:
    index = _index("weighted:1")
    index.upsert(["d0"], _vectors(1, seed=3), ["nothing about money"])
    index.delete(["d4"])
    hits = index.search_hybrid(_vectors(1, seed=2)[0], "budget", k=1)[0]
    assert hits[0].id not in {"d0", "d4"}  # no text holds "budget" any more: the fused order is arbitrary
    with pytest.raises(ValueError, match="needs every record's text"):
        index.upsert(["x"], _vectors(1), None)
    with pytest.raises(ValueError, match="keeps no BM25"):
        VectorIndex(16).search_hybrid(_vectors(1)[0], "q")


def test_round_trip_without_pickle(tmp_path: Path) -> None:
    index = _index("weighted:0.7")
    queries = _vectors(3, seed=4)
    before = index.search_hybrid(queries, ["budget", "remote", "speech"], k=3)
    index.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["hybrid"] == {
        "fusion": "weighted", "weight": 0.7, "candidates": 100, "feedback": 5, "feedback_weight": 1.0,
        "document_prior": 0.5,
    }  # fmt: skip
    bm25_file = tmp_path / manifest["files"]["bm25"]
    with zipfile.ZipFile(bm25_file) as archive, np.load(bm25_file, allow_pickle=False) as arrays:
        assert all(name.endswith(".npy") for name in archive.namelist())
        assert all(arrays[name].dtype != object for name in arrays.files)
    loaded = VectorIndex.load(tmp_path)
    assert loaded.hybrid == HybridConfig("weighted", 0.7)
    after = loaded.search_hybrid(queries, ["budget", "remote", "speech"], k=3)
    assert [[(h.id, round(h.score, 6)) for h in r] for r in after] == [
        [(h.id, round(h.score, 6)) for h in r] for r in before
    ]
    loaded.upsert(["d9"], _vectors(1, seed=5), ["budget budget budget"])
    loaded.save(tmp_path)  # a new generation; the old BM25 file is removed
    assert sorted(p.name for p in tmp_path.glob("bm25-*.npz")) == ["bm25-2.npz"]
    assert VectorIndex.load(tmp_path).search_hybrid(_vectors(1)[0], "budget", k=1, hybrid="weighted:1")[0][0].id == "d9"


def test_a_damaged_or_foreign_bm25_file_is_refused(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _index().save(first)
    other = VectorIndex(16, hybrid=True)
    other.upsert(["a", "b"], _vectors(2), ["one text", "another"])
    other.save(second)
    manifest = json.loads((first / "manifest.json").read_text())
    name = manifest["files"]["bm25"]
    original = (first / name).read_bytes()
    (first / name).write_bytes(original[:-7] + b"garbage")
    with pytest.raises(IndexCorruptError, match="does not match its checksum"):
        VectorIndex.load(first)
    # a well-formed BM25 file of another index, checksum updated: the records do not match
    from kvembed_rag._io import file_sha256

    (first / name).write_bytes(
        (second / json.loads((second / "manifest.json").read_text())["files"]["bm25"]).read_bytes()
    )
    manifest["sha256"]["bm25"] = file_sha256(first / name, memoise=False)
    (first / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="do not belong together"):
        VectorIndex.load(first)
    # an .npz that is not a BM25 store
    np.savez(first / name, something=np.arange(3))
    manifest["sha256"]["bm25"] = file_sha256(first / name, memoise=False)
    (first / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="lacks"):
        VectorIndex.load(first)
    # the BM25 file named but its settings gone
    (first / name).write_bytes(original)
    manifest["sha256"]["bm25"] = file_sha256(first / name, memoise=False)
    manifest.pop("hybrid")
    (first / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="come together"):
        VectorIndex.load(first)


def test_enable_hybrid_on_an_existing_dense_index(tmp_path: Path) -> None:
    index = VectorIndex(16)
    index.upsert(["a", "b"], _vectors(2), ["budget talk", "remote design"])
    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    assert loaded.lexical is None
    loaded.enable_hybrid("weighted:1")
    assert loaded.search_hybrid(_vectors(1)[0], "remote", k=1)[0][0].id == "b"
    untexted = VectorIndex(16)
    untexted.upsert(["a"], _vectors(1))
    with pytest.raises(ValueError, match="no text for BM25"):
        untexted.enable_hybrid()


def test_cli_index_hybrid_then_search(checkpoints, tmp_path: Path, capsys) -> None:
    from kvembed_rag.cli import main

    corpus = tmp_path / "docs"
    corpus.mkdir()
    for name, text in {
        "zip.txt": "Zip archives compress whole folders.",
        "json.txt": "Parse JSON strings into Python objects.",
        "csv.txt": "Read and write comma separated files.",
    }.items():
        (corpus / name).write_text(text)
    dense, hybrid = tmp_path / "dense", tmp_path / "hybrid"
    common = ["--model", str(checkpoints["llama"]), "--max-length", "128", "-q", "--json"]
    assert main(["index", str(corpus), "--out", str(hybrid), "--hybrid", "weighted:1", *common]) == 0
    assert main(["index", str(corpus), "--out", str(dense), "--hybrid", "none", *common]) == 0
    assert VectorIndex.load(dense).lexical is None
    default = tmp_path / "default"
    assert main(["index", str(corpus), "--out", str(default), *common]) == 0  # a new index: hybrid by default
    assert VectorIndex.load(default).hybrid == HybridConfig()
    assert VectorIndex.load(default).lexical.params == BM25Params()  # type: ignore[union-attr]
    assert main(["index", str(corpus), "--out", str(dense), *common]) == 0  # an existing one keeps what it has
    assert VectorIndex.load(dense).lexical is None
    assert main(["index", str(corpus), "--out", str(dense), "--bm25", "k1=1.2", *common]) == 1  # no BM25 to set
    assert "no BM25" in capsys.readouterr().err and VectorIndex.load(dense).lexical is None
    assert main(["index", str(corpus), "--out", str(default), "--bm25", "k1=1.2,b=0.75", *common]) == 0
    assert VectorIndex.load(default).lexical.params == REFERENCE_BM25  # type: ignore[union-attr]
    assert main(["index", str(corpus), "--out", str(default), *common]) == 0  # not given: kept
    assert VectorIndex.load(default).lexical.params == REFERENCE_BM25  # type: ignore[union-attr]
    assert main(["index", str(corpus), "--out", str(default), "--bm25", "k1=1.2;b=0.75", *common]) == 2
    assert main(["index", str(corpus), "--out", str(default), "--hybrid", "none", "--bm25", "b=0.5", *common]) == 2
    capsys.readouterr()
    assert main(["search", str(hybrid), "compress folders", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["hits"][0]["document"] == "zip.txt"  # BM25 alone (weight 1)
    assert main(["search", str(hybrid), "compress folders", "--hybrid", "none", "--json"]) == 0
    assert main(["search", str(dense), "compress folders", "--hybrid", "rrf"]) == 1  # no BM25 in a dense index
    assert "index --hybrid" in capsys.readouterr().err
    assert main(["search", str(hybrid), "q", "--hybrid", "mean"]) == 2
    assert main(["index", str(corpus), "--out", str(dense), "--hybrid", "mean", *common]) == 2
    # re-running on the dense index with --hybrid adds BM25 over its stored texts, without re-embedding
    assert main(["index", str(corpus), "--out", str(dense), "--hybrid", "weighted:1", *common]) == 0
    assert json.loads(capsys.readouterr().out)["embedded"] == 0
    assert VectorIndex.load(dense).hybrid == HybridConfig("weighted", 1.0)


@pytest.mark.parametrize(
    "hybrid",
    ["weighted:0.5", "rrf:0.5", "weighted:0.3+document:0", "weighted:0.5+feedback:3", "rrf:0.5+feedback:0+document:2"],
)
def test_the_index_and_the_evaluation_fuse_the_same_way(hybrid: str) -> None:
    """``eval passages`` scores with :func:`hybrid_order` over full score arrays; the shipped path is
    :meth:`VectorIndex.search_hybrid` over FAISS and the BM25 store: both must rank alike, with a candidate set
    smaller than the corpus so the union matters."""
    from kvembed_rag.eval.passages import hybrid_scores

    rng = np.random.default_rng(7)
    words = ["budget", "remote", "design", "speech", "noise", "quarter", "yellow", "button", "committee", "prototype"]
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(40)]
    vectors = _vectors(40, seed=11)
    index = VectorIndex(16, hybrid=hybrid)
    documents = [f"m{i % 7}" for i in range(40)]  # passages of 7 documents, interleaved; the last 5 have none
    metadata = [{"document": d} if i < 35 else {} for i, d in enumerate(documents)]
    index.upsert([f"d{i}" for i in range(40)], vectors, texts, metadata)
    config = HybridConfig.parse(hybrid)
    assert config is not None
    config = dataclasses.replace(config, candidates=8)
    queries = _vectors(5, seed=12)
    query_texts = ["budget remote", "speech noise quarter", "yellow", "committee prototype design", "none of these"]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    dense = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T  # (queries, docs) cosine
    store = BM25Store()
    store.upsert(list(range(40)), texts)
    lexical = np.stack([store.scores(q)[1] for q in query_texts]).astype(np.float32)
    own = [d if i < 35 else f"record {i}" for i, d in enumerate(documents)]  # a record without one is its own
    expected = hybrid_scores(dense, lexical, config, k=5, queries=queries, directions=unit, documents=own)
    for row, hits in enumerate(index.search_hybrid(queries, query_texts, k=5, hybrid=config)):
        order = [f"d{i}" for i in np.argsort(-expected[row], kind="stable")[:5]]
        assert [h.id for h in hits] == order, (row, hybrid)
        np.testing.assert_allclose([h.score for h in hits], np.sort(expected[row])[::-1][:5], atol=1e-5)


@pytest.mark.parametrize("precision", ["float32", "int8", "binary"])
def test_feedback_batched_equals_one_query_at_a_time(precision: str) -> None:
    """The moved queries of one call share one dense search: each query's hits are those it gets alone."""
    index = VectorIndex(16, precision=precision, hybrid="weighted:0.5+feedback:2")
    index.upsert([f"d{i}" for i in range(len(TEXTS))], _vectors(len(TEXTS)), TEXTS, [{"n": i} for i in range(6)])
    queries, texts = _vectors(4, seed=3), ["budget", "remote yellow", "nothing known", "speech noise"]
    for filter in (None, {"n": {"$in": [1, 2, 3]}}, {"n": 99}):  # the last keeps no record: no hits, no feedback
        together = index.search_hybrid(queries, texts, k=3, filter=filter)
        alone = [index.search_hybrid(q, t, k=3, filter=filter)[0] for q, t in zip(queries, texts, strict=True)]
        assert [[(h.id, round(h.score, 6)) for h in r] for r in together] == [
            [(h.id, round(h.score, 6)) for h in r] for r in alone
        ], filter
    assert together == [[], [], [], []]


@pytest.mark.parametrize("key", DOCUMENT_KEYS)
def test_the_document_prior_lifts_a_documents_passages_by_its_best_and_spares_lone_records(key: str) -> None:
    fused = np.array([0.9, 0.2, 0.5, 0.4, 0.1])  # (m,) candidates' fused scores
    documents = ["a", "a", "b", "b", "c"]
    top, scores = with_document_prior(fused, documents, HybridConfig(document_prior=0.5))
    # by hand: document bests a 0.9, b 0.5, c 0.1 -> min-max 1, 0.5, 0; score (f + 0.5 * prior) / 1.5
    expected = {0: (0.9 + 0.5) / 1.5, 1: (0.2 + 0.5) / 1.5, 2: (0.5 + 0.25) / 1.5, 3: (0.4 + 0.25) / 1.5, 4: 0.1 / 1.5}
    assert dict(zip(top.tolist(), scores.tolist(), strict=True)) == pytest.approx(expected)
    assert scores.max() <= 1.0  # a weighted fusion's scores stay within [0, 1]
    # every record its own document: the order is the fused one; weight 0: the scores are the fused ones
    alone, lifted = with_document_prior(fused, list(range(5)), HybridConfig(document_prior=3.0))
    assert alone.tolist() == np.argsort(-fused, kind="stable").tolist() and np.all(np.diff(lifted) <= 0)
    off, same = with_document_prior(fused, documents, HybridConfig(document_prior=0), count=3)
    assert off.tolist() == [0, 2, 3] and same == pytest.approx(fused[[0, 2, 3]])
    # through the index: a weak passage of the strong document overtakes a lone record scored above it
    index = VectorIndex(16, hybrid="weighted:1+feedback:0+document:3")
    texts = ["budget budget budget plan", "budget", "budget budget review", "unrelated words here"]
    index.upsert(["m#0", "m#1", "x", "y"], _vectors(4), texts, [{key: "m"}, {key: "m"}, {}, {}])  # each framework's key
    plain = [h.id for h in index.search_hybrid(_vectors(1)[0], "budget", k=3, hybrid="weighted:1+document:0")[0]]
    lifted_ids = [h.id for h in index.search_hybrid(_vectors(1)[0], "budget", k=3)[0]]
    assert plain[:2] == ["m#0", "x"] and lifted_ids[:2] == ["m#0", "m#1"]


def test_search_query_is_hybrid_when_the_index_and_the_query_have_text() -> None:
    hybrid, dense_only = _index("weighted:0.5"), _index(None)
    query = _vectors(1, seed=2)[0]
    ids = lambda hits: [h.id for h in hits[0]]  # noqa: E731
    assert ids(hybrid.search_query(query, "budget", 3)) == ids(hybrid.search_hybrid(query, "budget", 3))
    assert ids(hybrid.search_query(query, None, 3)) == ids(hybrid.search(query, 3))  # no text: dense
    assert ids(hybrid.search_query(query, "budget", 3, hybrid=False)) == ids(hybrid.search(query, 3))
    assert ids(dense_only.search_query(query, "budget", 3)) == ids(dense_only.search(query, 3))  # no BM25 kept
    rrf = hybrid.search_query(query, "budget", 3, hybrid="rrf:0.5")
    assert ids(rrf) == ids(hybrid.search_hybrid(query, "budget", 3, hybrid="rrf:0.5"))


@pytest.mark.parametrize("precision", ["float32", "int8", "binary"])
def test_feedback_runs_on_every_precision_from_the_stored_vectors(precision: str) -> None:
    """Feedback moves the query towards the *stored* vectors (decoded codes for int8 / binary): the top hit of
    weight-0 feedback with one passage fed back is the best match of the query moved towards that passage."""
    index = VectorIndex(16, precision=precision, hybrid="weighted:0+feedback:1")
    vectors = _vectors(len(TEXTS))
    index.upsert([f"d{i}" for i in range(len(TEXTS))], vectors, TEXTS)
    query = _vectors(1, seed=9)[0]
    first = index.search(query, k=1)[0][0]
    moved = feedback_query(query, index.vectors([first.id]), 1.0)
    expected = [h.id for h in index.search(moved, k=3)[0]]
    assert [h.id for h in index.search_hybrid(query, "budget", k=3)[0]] == expected
