"""The pure helpers of the benchmark scripts that produce docs/RESULTS.md (the scripts are not a package)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tables() -> ModuleType:
    return load_script("results_tables")


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    return load_script("classification_probe")


def test_tune_table_puts_windows_down_settings_across_and_marks_the_best(tables: ModuleType) -> None:
    def point(layers: list[int], bias: float, pooling: str, score: float) -> dict:
        return {"layers": layers, "bias": bias, "pooling": pooling, "score": score}

    grid = [point([4, 5], 0, "hybrid", 0.70), point([4, 5], 1, "hybrid", 0.72), point([8, 9], 0, "hybrid", 0.75)]
    payload = {
        "task": "sts",
        "dataset": "stsb",
        "metric": "spearman",
        "model": "m",
        "best": grid[2],
        "baseline": grid[1],
        "no_rerouting": point([], -1e4, "hybrid", 0.69),
        "grid": grid,
    }
    text = tables.tune_table(payload)
    lines = text.splitlines()
    assert "no re-routing: 0.6900" in lines[0]
    assert lines[2] == "| layers | hybrid b=0 | hybrid b=1 |"
    assert lines[4] == "| [4, 5] | 0.7000 | 0.7200 |"
    assert lines[5] == "| [8, 9] | **0.7500** |  |"  # the best is bold; a point not in the grid stays empty


def test_eval_tables_group_by_task_and_show_the_secondary_metric(tables: ModuleType) -> None:
    rows = [
        {"task": "classification", "dataset": "b77", "model": "m", "max_length": 512, "method": method,
         "metric": "accuracy", "score": score, "n": 10, "macro_f1": score / 2}
        for method, score in (("kv", 0.5), ("mean", 0.25))
    ]  # fmt: skip
    text = tables.eval_tables(rows)
    assert "**classification / b77** (accuracy, macro_f1; n = 10)" in text
    assert "| kv | 0.5000 / 0.2500 |" in text and "| mean | 0.2500 / 0.1250 |" in text


def test_main_reads_every_kind_of_results_file(tables: ModuleType, tmp_path: Path, monkeypatch, capsys) -> None:
    bench = {"meta": {"model": "m", "device": "cpu", "dtype": "float32", "threads": 2, "batch_tokens": 64,
                      "kv_layers": [1]},
             "rows": [{"method": "plain", "length": 8, "batch": 8, "tokens_per_s": 100.0, "ratio_to_plain": 1.0,
                       "peak_mb": 3.0}]}  # fmt: skip
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    monkeypatch.setattr(sys, "argv", ["results_tables.py", str(tmp_path / "bench.json")])
    assert tables.main() == 0
    assert "| plain | 8 | 8 | 100 | 1.000 | 3 |" in capsys.readouterr().out


def test_probe_nearest_neighbour_and_anisotropy(probe: ModuleType) -> None:
    # Two clusters sharing a large common offset: raw cosines are all near 1 (anisotropic), centring separates them.
    offset = np.array([10.0, 10.0, 0.0])
    train = np.array([[1.0, 0, 0], [0, 0, 1.0]]) + offset
    test = np.array([[0.9, 0, 0.1], [0.1, 0, 0.8]]) + offset
    assert probe.nearest_neighbour(train, ["a", "b"], test) == ["a", "b"]
    assert probe.cross_label_cosine(test, ["a", "b"]) > 0.99
    assert probe.cross_label_cosine(np.eye(2), ["a", "b"]) == pytest.approx(0.0)


def test_postprocess_study_mean_rank_and_disjoint_samples() -> None:
    spec = importlib.util.spec_from_file_location("bench_postprocess_study", BENCHMARKS / "postprocess_study.py")
    assert spec is not None and spec.loader is not None
    study = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = study  # its dataclasses look their module up while the file executes
    spec.loader.exec_module(study)
    table = {
        ("kv", "none"): {("sts", "A"): 0.70, ("scifact", "A"): 0.50},
        ("kv", "center"): {("sts", "A"): 0.72, ("scifact", "A"): 0.60},
        ("kv", "whiten"): {("sts", "A"): 0.72, ("scifact", "A"): 0.40},
    }
    ranks = study.mean_ranks(table, list(table), ["sts", "scifact"])
    assert ranks == {("kv", "none"): 2.5, ("kv", "center"): 1.0, ("kv", "whiten"): 2.0}  # ties share the better rank
    order = study._perm(100, 0)
    assert sorted(order) == list(range(100)) and order == study._perm(100, 0) and order != list(range(100))


def test_postprocess_study_third_sample_is_disjoint_from_the_first_two() -> None:
    spec = importlib.util.spec_from_file_location("bench_postprocess_study", BENCHMARKS / "postprocess_study.py")
    assert spec is not None and spec.loader is not None
    study = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = study
    spec.loader.exec_module(study)
    if not (study.DATA / "banking77").is_dir() or not (study.DATA / "scifact").is_dir():
        pytest.skip("the dev data (../shared/data) is absent")

    def texts(samples: list, part_names: tuple[str, ...]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for sample in samples:
            for part in part_names:
                out.setdefault(sample.name, set()).update(sample.texts[part][0])
        return out

    banking = texts(study.banking_samples(150, 10, ("A", "B", "C")), ("train", "test"))
    scifact = texts(study.scifact_samples(50, 200, 96, ("A", "B", "C")), ("queries",))
    for by_name in (banking, scifact):
        assert set(by_name) == {"A", "B", "C"} and all(len(v) >= 45 for v in by_name.values())
        assert not by_name["C"] & (by_name["A"] | by_name["B"])
    # A and B do not move when C is asked for too (earlier rows and caches stay valid)
    alone = study.scifact_samples(50, 200, 96)
    assert [s.texts for s in alone] == [s.texts for s in study.scifact_samples(50, 200, 96, ("A", "B", "C"))[:2]]


def test_docs_plots_redraws_every_figure_from_stored_json(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    script = load_script("docs_plots")
    monkeypatch.setattr(sys, "argv", ["docs_plots.py", "--out", str(tmp_path)])
    assert script.main() == 0
    docs = BENCHMARKS.parent / "docs"
    expected = {p.name for p in docs.glob("*.png")}
    assert {p.name for p in tmp_path.glob("*.png")} == expected  # every figure in docs/ can be redrawn
    assert all((tmp_path / name).stat().st_size > 10_000 for name in expected)


def test_rank_families_renames_families_and_ranks_only_complete_candidates(tmp_path: Path, capsys) -> None:
    ranker = load_script("rank_families")

    def rows(setting: str, post: str, family: str, a: float, b: float) -> list[dict]:
        return [
            {"setting": setting, "post": post, "family": family, "sample": s, "score": v}
            for s, v in (("A", a), ("B", b))
        ]

    short = tmp_path / "short.json"
    short.write_text(
        json.dumps(
            {
                "rows": rows("kv", "none", "sts", 0.7, 0.6)
                + rows("kv", "center", "sts", 0.8, 0.7)
                + rows("kv-last", "none", "sts", 0.9, 0.8)
            }
        )
    )
    long = tmp_path / "long.json"
    long.write_text(
        json.dumps({"rows": rows("kv", "none", "qmsum", 0.9, 0.9) + rows("kv", "center", "qmsum", 0.5, 0.5)})
    )
    assert ranker.parse_source(f"{long}:qmsum=qmsum4096") == (long, {"qmsum": "qmsum4096"})
    with pytest.raises(SystemExit, match="OLD=NEW"):
        ranker.parse_source(f"{long}:qmsum")
    families, table, ranks = ranker.ranked(ranker.load_rows([(short, {}), (long, {"qmsum": "qmsum4096"})]))
    assert families == ["qmsum4096", "sts"]
    assert ranks == {("kv", "none"): 1.5, ("kv", "center"): 1.5}  # kv-last has no qmsum4096: not ranked
    assert table[("kv-last", "none")] == {("sts", "A"): 0.9, ("sts", "B"): 0.8}
    assert ranker.main([str(short), f"{long}:qmsum=qmsum4096", "--settings", "kv"]) == 0
    out = capsys.readouterr().out
    assert "2 candidates with every family (qmsum4096, sts)" in out and "| 1 | kv | none | 1.50 |" in out


def _bench_payload(rows: list[tuple[str, str, int, float, float]]) -> dict:
    keys = ("method", "dtype", "length", "tokens_per_s", "peak_mb")
    return {"meta": {"auto_dtype": "bfloat16"}, "rows": [dict(zip(keys, row, strict=True)) for row in rows]}


def test_bench_targets_read_ratios_from_a_bench_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    targets = load_script("bench_targets")
    single = [
        ("plain", "float32", 4096, 1000.0, 100.0),
        ("kv", "float32", 4096, 970.0, 130.0),
        ("echo", "float32", 4096, 500.0, 200.0),
    ]
    checks = {c["target"]: c for c in targets.check_targets([targets.Row(*r) for r in single])}
    assert checks["kv >= 0.95x plain tokens/s"]["ok"] is True
    assert abs(checks["echo <= 0.6x kv tokens/s"]["value"] - 500 / 970) < 1e-9
    assert checks["kv peak <= 1.2x plain"]["ok"] is False  # 1.3x
    dtypes = [
        ("plain", "float32", 512, 1000.0, 50.0),
        ("kv", "float32", 512, 990.0, 60.0),
        ("plain", "bfloat16", 512, 2000.0, 30.0),
        ("kv", "bfloat16", 512, 1900.0, 40.0),
    ]
    checks = {c["target"]: c for c in targets.check_dtype_targets([targets.Row(*r) for r in dtypes], "bfloat16")}
    assert checks["kv bfloat16 >= 1.8x kv float32"]["value"] == pytest.approx(1900 / 990)
    assert checks["kv >= 0.97x plain (float32)"]["ok"] is True
    assert checks["kv >= 0.97x plain (bfloat16)"]["ok"] is False
    assert checks["kv peak bfloat16 <= float32"]["ok"] is True
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(_bench_payload(dtypes)))
    assert targets.main([str(path)]) == 0
    assert "kv >= 0.97x plain (bfloat16)       @512    0.950  MISSED" in capsys.readouterr().out


def test_window_search_grid_and_report_compare_every_point_with_rerouting_off(tmp_path: Path, capsys) -> None:
    search = load_script("window_search")
    assert search.parse_ints("0-6:2,9,4") == [0, 2, 4, 6, 9]
    assert search.windows([0, 16, 17], [1, 2], 18) == [[0], [0, 1], [16], [16, 17], [17]]  # [17, 18] dropped
    assert search.label([4, 5], 1.0, "hybrid") == "4-5/b1/hybrid" and search.label([], 1.0, "last") == "off/last"

    def rows(setting: str, scores: dict[str, tuple[float, float]]) -> list[dict]:
        return [
            {"setting": setting, "pooling": "hybrid", "post": "auto", "family": f, "sample": s, "score": v}
            for f, ab in scores.items()
            for s, v in zip("AB", ab, strict=True)
        ]

    data = (
        rows("off/hybrid", {"sts": (0.70, 0.60), "scifact": (0.80, 0.80)})
        + rows("4-5/b1/hybrid", {"sts": (0.75, 0.62), "scifact": (0.70, 0.75)})
        + rows("8-9/b1/hybrid", {"sts": (0.72, 0.65), "scifact": (0.85, 0.79)})
    )
    summary = search.report(data, "4-5/b1/hybrid", top=5)
    out = capsys.readouterr().out
    assert summary["auto"]["winner_on_A"] == "8-9/b1/hybrid"  # ranks 2 and 1 on A: mean 1.5
    assert summary["auto"]["mean_rank"] == {"off/hybrid": 2.5, "4-5/b1/hybrid": 2.0, "8-9/b1/hybrid": 1.5}
    assert summary["auto"]["per_family"]["sts"]["best_on_A"] == "4-5/b1/hybrid"  # re-routed points only
    assert "| 1 | 8-9/b1/hybrid | 1.50 | 0.7200 / 0.6500 (+0.0500) | 0.8500 / 0.7900 (-0.0100) |" in out
    assert "| scifact | 8-9/b1/hybrid | 0.8500 / 0.7900 | 0.8000 / 0.8000 | 0.7000 / 0.7500 | -0.0100 |" in out


def test_parent_passages_score_by_their_best_overlapping_child() -> None:
    parent = load_script("passage_parent")

    class P:
        def __init__(self, document: str, start: int, end: int) -> None:
            self.document, self.start, self.end = document, start, end

    parents = [P("m1", 0, 100), P("m1", 100, 200), P("m2", 0, 50)]
    children = [P("m1", 0, 40), P("m1", 40, 120), P("m1", 120, 200), P("m2", 0, 50), P("m3", 0, 10)]
    groups = parent.children_of(parents, children)
    assert groups == [[0, 1], [1, 2], [3]]  # a child straddling two parents counts for both; other documents never
    scores = np.array([[0.1, 0.9, 0.2, 0.3, 1.0]], np.float32)  # (queries, children)
    np.testing.assert_allclose(parent.best_child(scores, groups), [[0.9, 0.9, 0.3]])


def test_late_chunking_stretches_pack_consecutive_passages_of_one_document() -> None:
    late = load_script("passage_late")

    class P:
        def __init__(self, identifier: str, document: str) -> None:
            self.id, self.document = identifier, document

    passages = [P("a0", "a"), P("a1", "a"), P("a2", "a"), P("b0", "b")]
    tokens = {"a0": 60, "a1": 50, "a2": 20, "b0": 10}
    assert late.stretches(passages, tokens, 100) == [[0], [1, 2], [3]]  # 60 + 50 > 100; a new document starts anew


def test_neighbour_smoothing_moves_a_passage_towards_its_neighbours_in_its_own_document() -> None:
    neighbours = load_script("passage_neighbours")
    scores = np.array([[1.0, 0.0, 2.0, 4.0, 3.0]], np.float32)  # (queries, passages)
    documents = ["a", "a", "a", "b", "b"]
    out = neighbours.neighbour_smoothed(scores, documents, 0.5)
    # a0 has one neighbour (a1); a1 the mean of a0 and a2; b0 never sees a2 across the document border
    np.testing.assert_allclose(out, [[1.0 + 0.0, 0.0 + 0.75, 2.0 + 0.0, 4.0 + 1.5, 3.0 + 2.0]])
    np.testing.assert_array_equal(neighbours.neighbour_smoothed(scores, documents, 0.0), scores)
    alone = neighbours.neighbour_smoothed(scores[:, :1], ["a"], 1.0)  # no neighbour: unchanged
    np.testing.assert_array_equal(alone, scores[:, :1])


def test_one_sided_reroute_report_means_scifact_and_pools_later_passage_samples(capsys) -> None:
    one_sided = load_script("one_sided_reroute")
    rows = [
        dict(family="scifact", sample=s, docs="on", queries="off", system="dense", ndcg=v)
        for s, v in (("A", 0.6), ("B", 0.7), ("C", 0.8))
    ]
    rows += [
        dict(family="passages", sample=s, docs="off", queries="on", system="hybrid", ndcg=v, questions=n)
        for s, v, n in (("A", 0.9, 10), ("B", 0.2, 10), ("C", 0.5, 30), ("D", None, 5))  # D: not cached
    ]
    one_sided.report(rows, [8, 9])
    out = capsys.readouterr().out
    assert "8,9 / off" in out and "mean 0.7000" in out
    assert "D missing" in out and "B+C+D 0.4250" in out  # (0.2 * 10 + 0.5 * 30) / 40; A chooses, never pooled


def test_window_search_mean_source_prototype_reduces_to_the_last_token_and_restores(make_embedder) -> None:
    import kvembed_rag.attention as attention

    search = load_script("window_search")
    embedder = make_embedder("llama", layers=[1, 2], postprocess="none")
    texts = ["a short text", "another, somewhat longer text to embed"]
    shipped = embedder.encode(texts)
    original = attention._last_token_kv
    with search.rerouted_source("mean:1") as suffix:
        assert suffix == "/meankv1" and attention._last_token_kv is not original
        np.testing.assert_allclose(embedder.encode(texts), shipped, atol=1e-6)
    with search.rerouted_source("mean:3"):
        assert np.abs(np.asarray(embedder.encode(texts)) - np.asarray(shipped)).max() > 1e-4
    assert attention._last_token_kv is original
    with search.rerouted_source("last") as suffix:
        assert suffix == "" and attention._last_token_kv is original
    with pytest.raises(SystemExit, match="mean:K"), search.rerouted_source("mean:0"):
        pass


def test_reroute_price_rounds_are_shuffled_and_rows_give_the_ratios() -> None:
    price = load_script("reroute_price")
    calls: list[str] = []
    runs = {name: (lambda n=name: calls.append(n)) for name in ("plain", "off", "kv")}
    seconds = price.interleaved(runs, repeats=6)
    assert calls[:3] == ["plain", "off", "kv"] and len(calls) == 3 + 18  # one warm-up each, then 6 rounds of three
    rounds = [tuple(calls[3 + 3 * i : 6 + 3 * i]) for i in range(6)]
    assert all(sorted(r) == ["kv", "off", "plain"] for r in rounds) and len(set(rounds)) > 1  # shuffled per round
    assert all(len(values) == 6 for values in seconds.values())
    found = price.row(100, "bfloat16", {"plain": [1.0, 2.0, 3.0], "off": [0.5, 1.0, 1.0], "kv": [1.0, 1.0, 4.0]})
    assert found["kv_tokens_per_s"] == 100.0 and found["kv_over_off"] == 1.0 and found["kv_over_plain"] == 2.0
    assert found["best_kv_over_off"] == 0.5 and found["best_kv_over_plain"] == 1.0


def test_query_likelihood_from_a_cached_passage_prefix_equals_a_plain_forward_per_pair() -> None:
    import torch
    from tiny_models import build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    ql = load_script("passage_rerank_ql")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    passages = ["the cat sat on the mat", "a long passage about the weather and the river bank"]
    questions = ["where did the cat sit", "what about the river", "weather"]  # unequal lengths: right padding
    matrix = ql.question_likelihoods(model, tokenizer, passages, questions, batch=2)
    for row, question in enumerate(questions):
        for column, passage in enumerate(passages):
            prefix = tokenizer(ql.QL_PROMPT.format(passage=passage))["input_ids"]
            asked = tokenizer(" " + question, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([prefix + asked])).logits[0].float(), -1)
            expected = np.mean([float(logp[len(prefix) - 1 + j, t]) for j, t in enumerate(asked)])
            assert matrix[row, column] == pytest.approx(expected, abs=1e-5)


def test_query_likelihood_reranking_reorders_only_the_top_candidates() -> None:
    ql = load_script("passage_rerank_ql")
    hybrid = np.array([[0.9, 0.8, 0.7, 0.1]])  # (queries, passages), best first
    likelihood = np.array([[-5.0, -1.0, -3.0, 0.0]])  # the last is most likely but outside the top 3
    order = np.argsort(-ql.reranked(hybrid, likelihood, 3)[0], kind="stable")
    assert order.tolist() == [1, 2, 0, 3]
    # fused within the top 3, likelihood's share 0.7: minmax(hybrid) (1, .5, 0), minmax(likelihood) (0, 1, .5)
    fused = ql.fused_within(hybrid, likelihood, 3, 0.7)[0]
    np.testing.assert_allclose(fused[:3] - 1e6, [0.3, 0.15 + 0.7, 0.35], atol=1e-6)
    assert fused[3] == pytest.approx(0.1) and np.argsort(-fused, kind="stable").tolist() == [1, 2, 0, 3]
