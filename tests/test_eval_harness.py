"""The evaluation harness: metrics and learners against hand-computed cases, readers, cache, CLI rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kvembed_rag.cli import main
from kvembed_rag.eval.cache import EmbeddingCache
from kvembed_rag.eval.harness import EvalOptions, format_table, run_evaluation
from kvembed_rag.eval.learners import fit_predict_logistic, kmeans
from kvembed_rag.eval.metrics import accuracy, macro_f1, v_measure
from kvembed_rag.eval.scoring import evaluate_classification, rank_by_best_chunk, standardize_features
from kvembed_rag.eval.tasks import BeirTask, LabelledTexts, load_classification, load_clustering, load_loco

WORDS = [
    "fox",
    "dog",
    "meeting",
    "transcript",
    "abstract",
    "essay",
    "token",
    "prefix",
    "value",
    "key",
    "query",
    "context",
    "word",
    "sentence",
]


def _entropy(counts: list[float]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c)


def test_accuracy_and_macro_f1_hand_computed():
    gold = ["a", "a", "b", "c"]
    predicted = ["a", "b", "b", "b"]
    assert accuracy(predicted, gold) == pytest.approx(0.5)
    # a: tp1 fp0 fn1 -> 2/3; b: tp1 fp2 fn0 -> 2/4; c: tp0 -> 0
    assert macro_f1(predicted, gold) == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])


def test_v_measure_hand_computed():
    # scikit-learn's documented example: v_measure_score([0, 0, 1, 1], [0, 0, 1, 2]) == 0.8
    assert v_measure([0, 0, 1, 2], ["x", "x", "y", "y"]) == pytest.approx(0.8)
    assert v_measure([5, 5, 7, 7], ["x", "x", "y", "y"]) == pytest.approx(1.0)  # names do not matter
    assert v_measure([0, 0, 0, 0], ["x", "x", "y", "y"]) == pytest.approx(0.0)
    # an asymmetric case through mutual information: h = I/H(C), c = I/H(K)
    clusters, gold = [0, 0, 1, 1, 1, 2], ["a", "a", "a", "b", "b", "b"]
    table = {(0, "a"): 2, (1, "a"): 1, (1, "b"): 2, (2, "b"): 1}
    n = 6
    h_c, h_k = _entropy([3, 3]), _entropy([2, 3, 1])
    k_sizes, c_sizes = {0: 2, 1: 3, 2: 1}, {"a": 3, "b": 3}
    mi = sum(v / n * math.log(v * n / (k_sizes[k] * c_sizes[c])) for (k, c), v in table.items())
    h, c = mi / h_c, mi / h_k
    assert v_measure(clusters, gold) == pytest.approx(2 * h * c / (h + c))


def test_kmeans_recovers_separated_blobs_deterministically():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    points = np.concatenate([c + rng.normal(0, 0.5, (30, 2)) for c in centres])
    labels = [str(i) for i in range(3) for _ in range(30)]
    clusters = kmeans(points, 3, seed=0)
    assert v_measure(clusters, labels) == pytest.approx(1.0)
    np.testing.assert_array_equal(clusters, kmeans(points, 3, seed=0))
    with pytest.raises(ValueError, match="k must be"):
        kmeans(points, 0)


def test_logistic_regression_separates_and_generalises():
    rng = np.random.default_rng(0)
    means = {"left": [-2.0, 0.0, 0.0], "right": [2.0, 0.0, 0.0], "up": [0.0, 2.0, 0.0]}
    train_x = np.concatenate([rng.normal(m, 0.6, (40, 3)) for m in means.values()])
    train_y = [label for label in means for _ in range(40)]
    test_x = np.concatenate([rng.normal(m, 0.6, (20, 3)) for m in means.values()])
    test_y = [label for label in means for _ in range(20)]
    predicted = fit_predict_logistic(train_x, train_y, test_x)
    assert accuracy(predicted, test_y) >= 0.95
    assert set(predicted) <= set(means)


def test_rank_by_best_chunk_scores_documents_by_their_best_chunk():
    chunks = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])  # doc a: 0,1; doc b: 2; doc c: 3
    owner = np.array([0, 0, 1, 2])
    ranked = rank_by_best_chunk(np.array([[0.0, 1.0], [1.0, 0.0]]), chunks, owner, ["a", "b", "c"], 3)
    assert ranked == [["a", "b", "c"], ["a", "c", "b"]]


def test_classification_reader_splits_a_lone_csv_per_label(tmp_path):
    csv_file = tmp_path / "train.csv"
    rows = ["text,category"] + [f'"text {i}, with comma",{"ab"[i % 2]}' for i in range(40)]
    csv_file.write_text("\n".join(rows) + "\n")
    train, test, how = load_classification(tmp_path, test_fraction=0.25)
    assert len(train.texts) == 30 and len(test.texts) == 10 and "split" in how
    assert sorted(set(test.labels)) == ["a", "b"] and not set(train.texts) & set(test.texts)
    assert train.texts[0].startswith("text ") and "," in train.texts[0]
    (tmp_path / "given").mkdir()
    (tmp_path / "given" / "train.tsv").write_text("text\tlabel\nx y\tp\nz\tq\n")
    (tmp_path / "given" / "test.tsv").write_text("w\tp\n")
    train, test, how = load_classification(tmp_path / "given")
    assert (train.texts, train.labels, test.texts, how) == (["x y", "z"], ["p", "q"], ["w"], "given train/test")
    (tmp_path / "bad.tsv").write_text("only one field\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:1"):
        load_clustering(tmp_path / "bad.tsv")


def _write_loco(root, fmt: str = "jsonl") -> None:
    documents = [
        {"pid": f"{d}-{i}", "passage": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(60)), "dataset": d}
        for d in ("alpha", "beta")
        for i in range(4)
    ]
    queries = [
        {"qid": f"q{d}{i}", "query": f"{WORDS[i]} {WORDS[i + 1]}", "answer_pids": [f"{d}-{i}"], "dataset": d}
        for d in ("alpha", "beta")
        for i in range(3)
    ]
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(documents), root / "documents.parquet")
        pq.write_table(pa.Table.from_pylist(queries), root / "queries.parquet")
    else:
        (root / "loco_documents.jsonl").write_text("\n".join(json.dumps(r) for r in documents) + "\n")
        (root / "loco_queries.jsonl").write_text("\n".join(json.dumps(r) for r in queries) + "\n")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_loco_reader_groups_by_dataset(tmp_path, fmt):
    _write_loco(tmp_path / "loco", fmt)
    tasks = load_loco(tmp_path / "loco")
    assert sorted(tasks) == ["alpha", "beta"]
    assert len(tasks["alpha"].corpus) == 4 and tasks["alpha"].qrels["qalpha1"] == {"alpha-1": 1.0}
    with pytest.raises(FileNotFoundError, match="LoCoV1"):
        load_loco(tmp_path)


def test_sample_documents_keeps_only_answered_queries():
    task = BeirTask(
        {f"d{i}": ("", f"text {i}") for i in range(10)},
        {f"q{i}": f"query {i}" for i in range(10)},
        {f"q{i}": {f"d{i}": 1.0} for i in range(10)},
    )
    small = task.sample_documents(4, seed=3)
    assert len(small.corpus) == 4
    assert {next(iter(judged)) for judged in small.qrels.values()} == set(small.corpus)
    assert set(small.queries) == set(small.qrels)
    assert small.corpus == task.sample_documents(4, seed=3).corpus  # seeded


def test_cache_reuses_vectors_and_adds_only_new_methods(make_embedder, tmp_path):
    base = make_embedder("llama", layers=[2])
    sts = tmp_path / "sts.tsv"
    sts.write_text(
        "sentence1\tsentence2\tscore\n" + "".join(f"{WORDS[i]}\t{WORDS[i + 1]}\t{i % 5}\n" for i in range(8))
    )
    cache = EmbeddingCache(tmp_path / "cache")
    first = run_evaluation(base, "sts", [sts], methods=["kv", "mean"], cache=cache)
    assert [r.cached for r in first] == [False, False] and all(r.tokens > 0 for r in first)
    again = run_evaluation(base, "sts", [sts], methods=["kv", "mean", "last"], cache=cache)
    assert [r.cached for r in again] == [True, True, False]
    assert [r.score for r in again[:2]] == [r.score for r in first]
    assert [r.tokens for r in again[:2]] == [r.tokens for r in first]
    other_bias = run_evaluation(base.variant(bias=3.0), "sts", [sts], methods=["kv"], cache=cache)
    assert other_bias[0].cached is False  # a different configuration is a different cache entry
    assert "stsb" not in format_table(again) and "sts" in format_table(again)


def test_loco_chunks_long_documents_and_sweeps_lengths(make_embedder, tmp_path):
    _write_loco(tmp_path / "loco")
    base = make_embedder("qwen3", layers=[2])
    options = EvalOptions(limit=2)
    rows = run_evaluation(
        base,
        "loco",
        [tmp_path / "loco"],
        methods=["kv"],
        lengths=[64, 512],
        options=options,
        cache=EmbeddingCache(None),
    )
    assert [(r.dataset, r.max_length) for r in rows] == [("alpha", 64), ("alpha", 512), ("beta", 64), ("beta", 512)]
    short, long = rows[0], rows[1]
    assert short.extra["chunks"] > 4 and long.extra["chunks"] == 4  # 60-word documents fit in 512 tokens
    assert all(r.n == 2 and 0 <= r.score <= 1 for r in rows)
    truncated = run_evaluation(
        base,
        "loco",
        [tmp_path / "loco"],
        methods=["mean"],
        lengths=[64],
        options=EvalOptions(long_docs="truncate"),
        cache=EmbeddingCache(None),
    )
    assert truncated[0].extra["truncated"] == 4


def test_cli_eval_every_task_writes_rows(checkpoints, tmp_path, capsys):
    model = str(checkpoints["llama"])
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{WORDS[i]}\t{WORDS[i + 2]}\t{i}\n" for i in range(6)))
    labelled = tmp_path / "labelled.tsv"
    labelled.write_text("".join(f"{WORDS[i % 7]} {WORDS[(i * 3) % 11]}\t{'xyz'[i % 3]}\n" for i in range(24)))
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": WORDS[i], "text": WORDS[i + 1]}) + "\n" for i in range(6))
    )
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": WORDS[i]}) + "\n" for i in range(3))
    )
    (beir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\nq2\td2\t1\n")
    _write_loco(tmp_path / "loco")
    cases = [
        ("sts", sts, "spearman", []),
        ("retrieval", beir, "ndcg@10", []),
        ("classification", labelled, "accuracy", []),
        ("clustering", labelled, "v_measure", []),
        ("loco", tmp_path / "loco", "ndcg@10", ["--max-length", "64,256", "--plot", str(tmp_path / "sweep.png")]),
    ]
    for task, path, metric, extra in cases:
        out = tmp_path / f"{task}.json"
        argv = ["eval", task, str(path), "--model", model, "--methods", "kv,mean", "--json", str(out), "-q", *extra]
        assert main([*argv, "--layers", "2", "--cache-dir", str(tmp_path / "cache")]) == 0, task
        rows = json.loads(out.read_text())
        assert {r["method"] for r in rows} == {"kv", "mean"} and all(r["metric"] == metric for r in rows)
        for field in ("task", "dataset", "model", "method", "metric", "score", "n", "seconds", "tokens", "max_length"):
            assert all(field in r for r in rows), field
        if task == "classification":
            assert all("macro_f1" in r for r in rows) and not any("standardized" in r for r in rows)
            again = tmp_path / "standardized.json"
            assert main([*argv[:-3], "--json", str(again), "-q", "--standardize", "--layers", "2",
                         "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
            assert all(r["standardized"] == 1 and r["cached"] for r in json.loads(again.read_text()))
        assert metric in capsys.readouterr().out
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert len(json.loads((tmp_path / "loco.json").read_text())) == 2 * 2 * 2  # datasets x lengths x methods


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "kv,nope"], "unknown methods"),
        (["--max-length", "512,x"], "--max-length"),
        (["--max-length", "0"], "--max-length"),
        (["--sample"], "give --limit too"),
    ],
)
def test_cli_eval_usage_errors(checkpoints, tmp_path, capsys, extra, message):
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\na\tb\t1\n")
    assert main(["eval", "sts", str(sts), "--model", str(checkpoints["llama"]), "-q", *extra]) == 2
    assert message in capsys.readouterr().err
    assert main(["eval", "sts", str(tmp_path / "missing.tsv"), "-q"]) == 2


def test_variant_shares_the_backbone_and_resets_method_defaults(make_embedder):
    base = make_embedder("llama", layers=[2])
    echo = base.variant(method="echo", max_length=128)
    assert echo.model is base.model and echo.method == "echo" and echo.max_length == 128
    assert echo.pooling == "mean" and echo.prompts != base.prompts  # the method's own pooling and prompts
    back = echo.variant(method="kv")
    assert back.layers == [2] and back.pooling == "hybrid"
    np.testing.assert_allclose(back.encode(["a fox"]), base.encode(["a fox"]), atol=1e-6)
    with pytest.raises(TypeError, match="cannot change"):
        base.variant(device="cpu")


def test_standardize_features_uses_training_statistics_only():
    train = np.array([[0.0, 10.0], [2.0, 30.0]])
    test = np.array([[1.0, 20.0], [4.0, 50.0]])
    z_train, z_test = standardize_features(train, test)
    np.testing.assert_allclose(z_train, [[-1, -1], [1, 1]], atol=1e-5)
    np.testing.assert_allclose(z_test, [[0, 0], [3, 3]], atol=1e-5)


def test_standardized_classification_recovers_labels_hidden_by_anisotropy():
    # 32 dimensions of large label-free variation and 8 tiny ones that carry the label: the regularised
    # regression on raw vectors spends its weight budget on the large ones; z-scored features fix that.
    rng = np.random.default_rng(0)
    labels = [str(i % 4) for i in range(80)]
    centres = rng.normal(size=(4, 8))
    x = np.array([[*rng.normal(size=32), *(1e-2 * (centres[int(y)] + 0.3 * rng.normal(size=8)))] for y in labels])

    class Fixed:
        def encode(self, texts, role):
            return x[[int(t) for t in texts]]

    train = LabelledTexts([str(i) for i in range(40)], labels[:40])
    test = LabelledTexts([str(i) for i in range(40, 80)], labels[40:])
    raw = evaluate_classification(Fixed(), train, test)
    standardized = evaluate_classification(Fixed(), train, test, standardize=True)
    assert raw.score <= 0.5 and standardized.score >= 0.9 and standardized.extra["standardized"] == 1.0
