"""Metrics against hand-computed cases, and the task readers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvembed_rag.eval.metrics import mrr_at_k, ndcg_at_k, recall_at_k, spearman
from kvembed_rag.eval.tasks import load_beir, load_sts


def test_spearman_matches_hand_computation_with_ties():
    # ranks of x: [1, 2.5, 2.5, 4]; of y: [1, 2, 3, 4] -> Pearson of the ranks
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4])
    expected = np.corrcoef(rx, ry)[0, 1]
    assert spearman([0.1, 0.5, 0.5, 0.9], [1, 2, 3, 4]) == pytest.approx(expected)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        spearman([1], [1])


def test_ndcg_hand_computed():
    relevant = {"a": 1.0, "b": 1.0}
    # hits at ranks 1 and 3: DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3)
    assert ndcg_at_k(["a", "x", "b"], relevant, 10) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["a", "b"], relevant, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], relevant, 10) == 0.0
    assert ndcg_at_k(["x", "a"], relevant, 1) == 0.0  # cut at k
    graded = {"a": 2.0, "b": 1.0}  # gains are the grades: DCG = 1 + 2/log2(3); IDCG = 2 + 1/log2(3)
    assert ndcg_at_k(["b", "a"], graded, 10) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


def test_recall_and_mrr_hand_computed():
    relevant = {"a": 1.0, "b": 1.0, "c": 0.0}
    assert recall_at_k(["x", "a", "c"], relevant, 100) == pytest.approx(0.5)
    assert recall_at_k(["a", "b"], relevant, 1) == pytest.approx(0.5)
    assert mrr_at_k(["x", "c", "b"], relevant, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "y"], relevant, 10) == 0.0


def test_readers(tmp_path):
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\na b\tc d\t4.5\ne\tf\t0\n")
    pairs = load_sts(sts)
    assert pairs.first == ["a b", "e"] and list(pairs.scores) == [4.5, 0.0]
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(
        '{"_id": "d1", "title": "T", "text": "x"}\n{"_id": "d2", "text": "y"}\n{"_id": "d3", "text": "z"}\n'
    )
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "find x"}\n{"_id": "q2", "text": "unjudged"}\n')
    (beir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    task = load_beir(beir)
    assert list(task.queries) == ["q1"] and task.qrels == {"q1": {"d1": 1.0}}
    assert task.document_texts() == (["d1", "d2", "d3"], ["T\nx", "y", "z"])
    small = load_beir(beir, corpus_limit=2)
    assert "d1" in small.corpus and len(small.corpus) == 2  # judged documents always stay
    with pytest.raises(FileNotFoundError, match="test"):
        load_beir(beir, "test")


def test_limit_takes_the_first_n_and_sample_a_seeded_random_n_in_file_order(tmp_path):
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\n" + "".join(f"a{i}\tb{i}\t{i}\n" for i in range(40)))
    assert load_sts(sts, 5).first == [f"a{i}" for i in range(5)]
    sampled = load_sts(sts, 5, sample=True, seed=0)
    picked = [int(text[1:]) for text in sampled.first]
    assert len(picked) == 5 and picked == sorted(picked) and picked != list(range(5))
    assert sampled.second == [f"b{i}" for i in picked] and list(sampled.scores) == [float(i) for i in picked]
    assert load_sts(sts, 5, sample=True, seed=0).first == sampled.first  # seeded: reproducible
    assert load_sts(sts, 5, sample=True, seed=1).first != sampled.first
    assert len(load_sts(sts, 100, sample=True).first) == 40  # a limit beyond the file keeps everything

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("".join(f'{{"_id": "d{i}", "text": "t{i}"}}\n' for i in range(40)))
    (beir / "queries.jsonl").write_text("".join(f'{{"_id": "q{i}", "text": "find {i}"}}\n' for i in range(40)))
    (beir / "qrels" / "dev.tsv").write_text("".join(f"q{i}\td{i}\t1\n" for i in range(40)))
    assert list(load_beir(beir, query_limit=4).queries) == ["q0", "q1", "q2", "q3"]
    task = load_beir(beir, query_limit=4, sample=True, corpus_limit=10)
    assert len(task.queries) == 4 and list(task.queries) != ["q0", "q1", "q2", "q3"]
    assert set(task.qrels) == set(task.queries) and {f"d{q[1:]}" for q in task.queries} <= set(task.corpus)
