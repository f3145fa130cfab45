"""Passage-level evaluation on hand-made fixtures: readers, passage packing, relevance by span overlap, metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kvembed_rag.eval.passages import (
    ANSWER_BUDGETS,
    SAMPLES,
    Passage,
    PassageOptions,
    SpanQuery,
    answer_coverage,
    evaluate_passages,
    load_passage_task,
    make_passages,
    passage_metrics,
    passage_qrels,
    prepare,
    whitespace_offsets,
)
from kvembed_rag.retrieval.lexical import feedback_query


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def meetings(tmp_path: Path) -> Path:
    """Two meetings of 1-word-per-... turns; each turn has 3 words once 'Speaker:' is counted."""
    folder = tmp_path / "spans"
    folder.mkdir()
    turns_a = [{"speaker": "A", "content": f"apple {i}"} for i in range(6)]  # "A: apple i" = 3 words
    turns_a[4]["content"] = "budget talk"
    turns_b = [{"speaker": "B", "content": f"pear {i}"} for i in range(4)]
    _write(folder / "meetings.jsonl", [
        {"id": "m1", "split": "val", "turns": turns_a},
        {"id": "m2", "split": "train", "turns": turns_b},
    ])  # fmt: skip
    _write(folder / "queries.jsonl", [
        {"id": "q1", "meeting": "m1", "query": "budget talk", "spans": [[4, 4]]},
        {"id": "q2", "meeting": "m2", "query": "pear 0", "spans": [[0, 1]]},
        {"id": "q3", "meeting": "m1", "query": "nothing", "spans": [[9, 12]]},  # outside the meeting: dropped
    ])  # fmt: skip
    return folder


def test_qmsum_spans_reader_turns_become_lines_and_spans_characters(meetings: Path) -> None:
    task = load_passage_task(meetings)
    m1 = task.documents["m1"]
    assert m1.text.splitlines()[4] == "A: budget talk"
    assert m1.split == "val" and len(m1.units) == 6
    q1 = next(q for q in task.queries if q.id == "q1")
    assert [m1.text[s:e] for s, e in q1.spans] == ["A: budget talk"]
    assert next(q for q in task.queries if q.id == "q3").spans == []


def test_passages_pack_whole_turns_up_to_size_with_overlap(meetings: Path) -> None:
    m1 = load_passage_task(meetings).documents["m1"]
    plain = make_passages(m1, whitespace_offsets, size=6)  # two 3-word turns per passage
    assert [p.text.count("\n") + 1 for p in plain] == [2, 2, 2]
    assert plain[2].text == "A: budget talk\nA: apple 5" and plain[2].id == "m1#2"
    overlapped = make_passages(m1, whitespace_offsets, size=6, overlap=3)  # each repeats its predecessor's last turn
    assert [p.text.splitlines()[0] for p in overlapped] == [
        f"A: {c}" for c in ("apple 0", "apple 1", "apple 2", "apple 3", "budget talk")
    ]
    titled = make_passages(m1, whitespace_offsets, size=6, header=True)
    assert titled[0].text.startswith("m1\n\nA: apple 0") and titled[0].start == plain[0].start


def test_a_turn_longer_than_a_passage_becomes_token_windows(tmp_path: Path) -> None:
    folder = tmp_path / "generic"
    folder.mkdir()
    _write(folder / "documents.jsonl", [{"id": "d", "title": "T", "text": "one two three four five\nsix"}])
    _write(folder / "queries.jsonl", [{"id": "q", "query": "six", "document": "d", "answers": [[24, 27]]}])
    document = load_passage_task(folder).documents["d"]
    passages = make_passages(document, whitespace_offsets, size=2)
    assert [p.text for p in passages] == ["one two", "three four", "five", "six"]
    assert passage_qrels(passages, load_passage_task(folder).queries) == {"q": {"d#3": 1.0}}


def test_generic_reader_refuses_spans_outside_the_text(tmp_path: Path) -> None:
    folder = tmp_path / "generic"
    folder.mkdir()
    _write(folder / "documents.jsonl", [{"id": "d", "text": "short"}])
    _write(folder / "queries.jsonl", [{"id": "q", "query": "x", "document": "d", "answers": [[2, 99]]}])
    with pytest.raises(ValueError, match="outside its document's 5 characters"):
        load_passage_task(folder)
    with pytest.raises(FileNotFoundError, match=r"meetings\.jsonl"):
        load_passage_task(tmp_path)


def test_relevance_is_overlap_and_unanswerable_queries_are_dropped(meetings: Path) -> None:
    run = prepare(load_passage_task(meetings), whitespace_offsets, size=6)
    assert run.qrels == {"q1": {"m1#2": 1.0}, "q2": {"m2#0": 1.0}}
    assert run.dropped == 1 and [q.id for q in run.queries] == ["q1", "q2"]


def test_passage_metrics_by_hand(meetings: Path) -> None:
    run = prepare(load_passage_task(meetings), whitespace_offsets, size=6)
    # q1: its passage 3rd, behind two passages of the same meeting; q2: its passage 6th (past R@5), behind m1's
    ranked = [["m1#0", "m1#1", "m1#2", "m2#0", "m2#1"], ["m1#0", "m1#1", "m1#2", "m2#1", "m1#0x", "m2#0"]]
    document_of = {**run.document_of, "m1#0x": "m1"}
    metrics = passage_metrics(ranked, run.queries, run.qrels, document_of)
    assert metrics["ndcg@10"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(7)) / 2)
    assert metrics["recall@5"] == pytest.approx(0.5) and metrics["recall@20"] == pytest.approx(1.0)
    # documents by best passage: q1 -> [m1, m2] (rank 1), q2 -> [m1, m2] (rank 2)
    assert metrics["doc_recall@1"] == pytest.approx(0.5)
    assert metrics["doc_ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)


def test_answer_coverage_within_a_token_budget_by_hand() -> None:
    # one document "aaaa bbbb cccc dddd" (4 words); the answer is "bbbb cccc" (characters 5-14)
    text = "aaaa bbbb cccc dddd"
    passages = {
        "d#0": Passage("d#0", "d", text[0:9], 0, 9),  # aaaa bbbb: 2 tokens, half the answer
        "d#1": Passage("d#1", "d", text[5:14], 5, 14),  # bbbb cccc: 2 tokens, all of it
        "d#2": Passage("d#2", "d", text[10:19], 10, 19),  # cccc dddd: 2 tokens, the other half
        "e#0": Passage("e#0", "e", "zzzz", 0, 4),  # another document's characters 0-4 never count
    }
    tokens = {"d#0": 2, "d#1": 2, "d#2": 2, "e#0": 1}
    query = SpanQuery("q", "b c", "d", [(5, 14)])
    answer = len("bbbb cccc")
    assert answer_coverage([["d#1"]], [query], passages, tokens, 2) == pytest.approx(1.0)
    assert answer_coverage([["d#0", "d#2"]], [query], passages, tokens, 2) == pytest.approx(4 / answer)  # budget: one
    assert answer_coverage([["d#0", "d#2"]], [query], passages, tokens, 4) == pytest.approx(8 / answer)
    # overlapping passages count their shared characters once; the other document's passage spends budget only
    assert answer_coverage([["e#0", "d#0", "d#1"]], [query], passages, tokens, 5) == pytest.approx(1.0)
    assert answer_coverage([["e#0", "d#0", "d#1"]], [query], passages, tokens, 3) == pytest.approx(4 / answer)
    # the first passage is always handed over, even past the budget
    assert answer_coverage([["d#1"]], [query], passages, tokens, 1) == pytest.approx(1.0)
    # another document's passage ranked first fills the budget: the answering passage behind it is not handed over
    assert answer_coverage([["e#0", "d#1"]], [query], passages, tokens, 2) == pytest.approx(0.0)
    assert answer_coverage([["e#0", "d#1"]], [query], passages, tokens, 3) == pytest.approx(1.0)


def test_prepare_counts_tokens_and_scores_report_answer_coverage(meetings: Path) -> None:
    run = prepare(load_passage_task(meetings), whitespace_offsets, size=6)
    assert run.tokens == {p.id: len(p.text.split()) for p in run.passages}
    metrics = run.score(np.eye(len(run.queries), len(run.passages)))
    assert {f"answer@{b}" for b in ANSWER_BUDGETS} <= set(metrics)
    assert all(0.0 <= metrics[f"answer@{b}"] <= 1.0 for b in ANSWER_BUDGETS)


def test_samples_a_and_b_are_disjoint_and_seeded(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    _write(folder / "documents.jsonl", [{"id": f"d{i}", "text": f"word{i} text"} for i in range(10)])
    _write(
        folder / "queries.jsonl",
        [{"id": f"q{i}", "query": f"word{i}", "document": f"d{i}", "answers": [[0, 4]]} for i in range(10)],
    )
    task = load_passage_task(folder)
    a, b = task.sample(4, "A", seed=3), task.sample(4, "B", seed=3)
    assert len(a.documents) == len(b.documents) == 4 and not set(a.documents) & set(b.documents)
    assert set(task.sample(4, "A", seed=3).documents) == set(a.documents)
    assert {q.document for q in a.queries} == set(a.documents)
    with pytest.raises(ValueError, match="needs 12 documents; only 10"):
        task.sample(6, "B")
    # C to P, the further confirmation samples, are disjoint from A, B and each other
    fitting = SAMPLES[: len(task.documents)]  # the fixture's 10 documents hold ten 1-document samples
    blocks = [set(task.sample(1, which, seed=3).documents) for which in fitting]
    assert len(set().union(*blocks)) == len(fitting) == 10
    with pytest.raises(ValueError, match="sample K of 1 needs 11 documents"):
        task.sample(1, SAMPLES[10])
    with pytest.raises(ValueError, match="sample must be one of"):
        task.sample(1, "Z")


def test_cli_lists_the_same_samples_as_the_task() -> None:
    from kvembed_rag.cli import build_parser

    eval_parser = build_parser()._subparsers._group_actions[0].choices["eval"]  # type: ignore[union-attr]
    choices = next(a.choices for a in eval_parser._actions if a.dest == "passage_sample")
    assert list(choices) == list(SAMPLES)


def test_bm25_row_without_a_model_finds_the_exact_words(meetings: Path) -> None:
    rows = evaluate_passages(meetings, None, options=PassageOptions(documents=None, sample=None, size=6))
    # the reference (k1 1.2, b 0.75), then BM25 alone with the parameters the hybrid rows use
    assert [r.method for r in rows] == ["bm25", "bm25 k1=2,b=0.5"]
    assert rows[0].model == "bm25 (k1=1.2,b=0.75)"
    same = evaluate_passages(meetings, None, options=PassageOptions(None, None, size=6, bm25="k1=1.2,b=0.75"))
    assert [r.method for r in same] == ["bm25"] and same[0].score == rows[0].score
    row = rows[0].to_dict()
    # q1 "budget talk" and q2 "pear 0": both answering passages hold the words; BM25 ranks them first
    assert row["score"] == pytest.approx(1.0) and row["doc_recall@1"] == pytest.approx(1.0)
    assert row["passages"] == 5 and row["dropped_queries"] == 1 and row["task"] == "passages"


class _BagOfWords:
    """A deterministic stand-in embedder: hashed word counts (enough for the harness's plumbing)."""

    method = "kv"
    dim = 64
    fingerprint = "bag-of-words-test"
    max_length = 512

    def variant(self, **changes: object) -> _BagOfWords:
        return self

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return whitespace_offsets(text)

    def tokenize(self, texts: list[str], role: str) -> list[object]:
        return [type("E", (), {"ids": t.split(), "truncated_by": 0})() for t in texts]

    def encode(self, texts: list[str], role: str, **_: object) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace(":", " ").split():
                out[row, sum(map(ord, word)) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    source = type("S", (), {"spec": "bag"})()


def test_dense_and_hybrid_rows_and_weight_zero_equals_dense(meetings: Path) -> None:
    hybrid = ("rrf:0+feedback:0+document:0", "weighted:0+feedback:0+document:0", "weighted:1+document:0")
    options = PassageOptions(documents=None, sample=None, size=6, hybrid=hybrid)
    rows = {r.method: r for r in evaluate_passages(meetings, _BagOfWords(), options=options)}
    assert list(rows) == [
        "bm25",
        "bm25 k1=2,b=0.5",
        "kv",
        "hybrid kv+bm25 rrf:0+feedback:0+document:0",
        "hybrid kv+bm25 weighted:0+feedback:0+document:0",
        "hybrid kv+bm25 weighted:1+feedback:5+document:0",
    ]
    for name in ("hybrid kv+bm25 rrf:0+feedback:0+document:0", "hybrid kv+bm25 weighted:0+feedback:0+document:0"):
        assert rows[name].score == pytest.approx(rows["kv"].score)
        assert rows[name].extra == pytest.approx(rows["kv"].extra)
    # all BM25: the hybrid's own parameters (the row beside the reference), whatever feedback moved
    assert rows["hybrid kv+bm25 weighted:1+feedback:5+document:0"].score == pytest.approx(rows["bm25 k1=2,b=0.5"].score)


def test_cli_eval_passages_bm25_only_json_and_usage_errors(meetings: Path, tmp_path: Path, capsys) -> None:
    from kvembed_rag.cli import main

    out = tmp_path / "rows.json"
    args = ["eval", "passages", str(meetings), "--methods", "none", "--passage-tokens", "6", "-q"]
    assert main([*args, "--documents", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["bm25", "bm25 k1=2,b=0.5"] and rows[0]["score"] == pytest.approx(1.0)
    assert "passages" in capsys.readouterr().out
    assert main([*args, "--documents", "2", "--bm25", "k1=1.2,b=0.75", "--json", str(out)]) == 0
    assert [r["method"] for r in json.loads(out.read_text())] == ["bm25"]  # the reference's own parameters
    assert main([*args, "--bm25", "k1=1.2;b=0.75"]) == 2  # before any model loads
    assert main([*args, "--hybrid", "mean:0.5"]) == 2  # an unknown fusion, before any model loads
    assert main([*args, "--passage-overlap", "6"]) == 2
    assert main([*args, "--documents", "2", "--passage-sample", "B"]) == 2  # B needs 4 documents; 2 exist


def test_cli_eval_passages_leaves_htp_room_for_its_markers(checkpoints, tmp_path: Path, monkeypatch) -> None:
    import kvembed_rag.cli.eval as eval_cli
    from kvembed_rag.cli import main

    folder = tmp_path / "short_turns"
    folder.mkdir()
    meetings = [
        {"id": m, "turns": [{"speaker": "A", "content": f"{m} point {i}."} for i in range(80)]} for m in ("m1", "m2")
    ]
    queries = [{"id": "q1", "meeting": "m1", "query": "point 7", "spans": [[7, 7]]}]
    (folder / "meetings.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meetings))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    loaded: dict[str, int] = {}
    original = eval_cli.load_embedder

    def spy(args, **kwargs):
        embedder = original(args, **kwargs)
        loaded[kwargs["method"]] = embedder.max_length
        return embedder

    monkeypatch.setattr(eval_cli, "load_embedder", spy)
    out = tmp_path / "rows.json"
    for method in ("htp", "kv"):
        argv = ["eval", "passages", str(folder), "--methods", method, "--model", str(checkpoints["llama"])]
        assert main([*argv, "--passage-tokens", "200", "--documents", "2", "--no-cache", "-q", "--json", str(out)]) == 0
    # kv: the passage, its header and the prompt; htp also room for two markers per sentence
    assert loaded == {"kv": 264, "htp": 464}


def test_passages_are_never_cut_the_harness_makes_room(make_embedder, tmp_path: Path) -> None:
    """A passage's size counts its turns' tokens; line breaks, the prompt (and HTP's markers) come on top. The
    harness raises ``max_length`` until no passage is cut, so a short limit scores the same as a long one."""
    import warnings

    from kvembed_rag.errors import TruncationWarning
    from kvembed_rag.eval.passages import room_for

    folder = tmp_path / "many_turns"
    folder.mkdir()
    meetings = [
        {"id": m, "turns": [{"speaker": "A", "content": f"{m} item {i} done."} for i in range(40)]} for m in "xyz"
    ]
    queries = [{"id": f"q{m}", "meeting": m, "query": f"{m} item 12", "spans": [[12, 12]]} for m in "xyz"]
    (folder / "meetings.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meetings))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    options = PassageOptions(documents=None, sample=None, size=40)
    short = make_embedder("llama", max_length=48)
    run = prepare(load_passage_task(folder), short.token_offsets, size=40)
    texts = [p.text for p in run.passages]
    assert any(e.truncated_by for e in short.tokenize(texts, "document"))  # the case: 48 cannot hold them
    roomy = room_for(short, texts)
    assert roomy.max_length > 48 and not any(e.truncated_by for e in roomy.tokenize(texts, "document"))
    assert room_for(roomy, texts) is roomy  # enough room: the embedder itself
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)
        cut_short = evaluate_passages(folder, short, options=options)
    long = evaluate_passages(folder, make_embedder("llama", max_length=1024), options=options)
    dense = [(r.method, round(r.score, 6)) for r in cut_short]
    assert dense == [(r.method, round(r.score, 6)) for r in long]
    assert next(r for r in cut_short if r.method == "kv").extra["max_input_tokens"] == roomy.max_length


def test_small_to_big_rows_score_each_passage_by_its_best_piece(make_embedder, tmp_path: Path) -> None:
    from kvembed_rag import passage_pieces

    folder = tmp_path / "long_turns"
    folder.mkdir()
    meetings = [
        {"id": m, "turns": [{"speaker": "A", "content": f"{m} item {i} is done and filed."} for i in range(30)]}
        for m in "xy"
    ]
    queries = [{"id": f"q{m}", "meeting": m, "query": f"{m} item 17 filed", "spans": [[17, 17]]} for m in "xy"]
    (folder / "meetings.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meetings))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    embedder = make_embedder("llama", max_length=256)
    hybrid = ("weighted:0+feedback:0+document:0", "weighted:0+feedback:2+document:0")
    options = PassageOptions(documents=None, sample=None, size=80, hybrid=hybrid, child_tokens=24)
    rows = {r.method: r for r in evaluate_passages(folder, embedder, options=options)}
    assert list(rows) == [
        "bm25",
        "bm25 k1=2,b=0.5",
        "kv",
        "kv pieces:24",
        "hybrid kv+bm25 weighted:0+feedback:0+document:0",
        "hybrid kv+bm25 weighted:0+feedback:2+document:0",
        "hybrid kv pieces:24+bm25 weighted:0+feedback:0+document:0",
        "hybrid kv pieces:24+bm25 weighted:0+feedback:2+document:0",
    ]
    plain = rows["hybrid kv pieces:24+bm25 weighted:0+feedback:0+document:0"]
    assert plain.score == pytest.approx(rows["kv pieces:24"].score)
    run = prepare(load_passage_task(folder), embedder.token_offsets, size=80)
    pieces = [passage_pieces(embedder, p.text, 24) for p in run.passages]
    assert max(map(len, pieces)) > 1  # the passages do split
    queries_v = embedder.encode_queries([q.text for q in run.queries])
    best = np.stack([(queries_v @ embedder.encode_documents(each).T).max(axis=1) for each in pieces], axis=1)
    assert rows["kv pieces:24"].score == pytest.approx(run.score(best)["ndcg@10"], abs=1e-6)
    # feedback over pieces (dense only, weight 0): the query moves towards its top 2 passages' mean pieces,
    # then each passage scores by its best piece, as VectorIndex does with small-to-big records
    directions = np.stack([embedder.encode_documents(each).mean(axis=0) for each in pieces])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    tops = np.argsort(-best, axis=1, kind="stable")[:, :2]  # (queries, 2)
    moved = [feedback_query(q, directions[top], 1.0) for q, top in zip(queries_v, tops, strict=True)]
    again = np.stack([[(embedder.encode_documents(each) @ m).max() for each in pieces] for m in moved])
    fed = rows["hybrid kv pieces:24+bm25 weighted:0+feedback:2+document:0"].score
    assert fed == pytest.approx(run.score(again)["ndcg@10"], abs=1e-6)
