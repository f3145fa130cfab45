"""kvembed-rag tune over several families: mean rank per family, raw vectors once per point, the saved winner."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from dev_pairs import STS_PAIRS

from kvembed_rag import KVEmbedder
from kvembed_rag.cli import main
from kvembed_rag.eval.cache import EmbeddingCache
from kvembed_rag.eval.scoring import evaluate_classification, evaluate_sts
from kvembed_rag.eval.tasks import load_classification, load_sts
from kvembed_rag.eval.tuning import (
    OFF_BIAS,
    TunePoint,
    best_point,
    check_postprocess,
    ordered,
    rank_against,
    rank_of,
    rank_points,
    tune,
)
from kvembed_rag.tuned import load_tuned, tuned_path

PAIRS = [
    *STS_PAIRS,
    ("A dog sleeps in the sun.", "The lazy dog sleeps.", 3.5),
    ("Long documents need chunks.", "The fox is quick.", 0.2),
]
TOPICS = {
    "animals": ["The fox runs.", "A dog barks loudly.", "Cats sleep all day.", "Birds sing at dawn.", "A cow grazes."],
    "money": ["My card was declined.", "Transfer money now.", "The bank fee is high.", "Pay the bill.", "Cash out."],
    "weather": ["It rains today.", "The sun is hot.", "Snow falls at night.", "A storm is coming.", "Wind blows."],
}


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A private cache: a saved tuning must not leak into other tests' embedders of the same checkpoint."""
    monkeypatch.setenv("KVEMBED_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def dev(tmp_path) -> dict[str, Path]:
    """Tiny dev sets of every family: an STS TSV, a BEIR folder and a labelled CSV (classification and clustering)."""
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS))
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = [text for texts in TOPICS.values() for text in texts]
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(docs))
    )
    questions = ["Which animal barks?", "Why was my card declined?", "Will it snow?", "Is it raining?"]
    answers = ["d1", "d5", "d12", "d10"]
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": q}) + "\n" for i, q in enumerate(questions))
    )
    (beir / "qrels" / "dev.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{d}\t1\n" for i, d in enumerate(answers))
    )
    labelled = tmp_path / "labelled.csv"
    rows = [f'"{text}",{label}\n' for label, texts in TOPICS.items() for text in texts]
    labelled.write_text("text,category\n" + "".join(rows))
    return {"sts": sts, "retrieval": beir, "classification": labelled, "clustering": labelled}


def point(scores: dict[str, float], i: int = 0) -> TunePoint:
    return TunePoint([i], 1.0, "hybrid", "none", scores)


def test_mean_rank_arithmetic_and_deterministic_ties() -> None:
    assert rank_of(0.5, [0.9, 0.5, 0.1]) == 2.0
    assert rank_of(0.5, [0.5, 0.5, 0.1]) == 1.5  # a tie of two spans ranks 1 and 2
    assert rank_of(0.5, [0.5, 0.1], member=False) == 1.5  # joining: as if it were one of them
    assert rank_of(float("nan"), [float("nan"), 0.0]) == 2.0  # NaN ranks last, never first
    assert rank_of(0.0, [float("nan"), 0.0]) == 1.0
    grid = [
        point({"sts": 0.7, "retrieval": 0.30}, 0),  # ranks 3, 1 -> 2.0
        point({"sts": 0.9, "retrieval": 0.10}, 1),  # ranks 1, 3 -> 2.0
        point({"sts": 0.8, "retrieval": 0.20}, 2),  # ranks 2, 2 -> 2.0
        point({"sts": 0.6, "retrieval": 0.20}, 3),  # ranks 4, 2 (tie with #2: 2.5) -> 3.25
    ]
    rank_points(grid, ["sts", "retrieval"])
    assert [p.ranks for p in grid] == [
        {"sts": 3.0, "retrieval": 1.0},
        {"sts": 1.0, "retrieval": 4.0},
        {"sts": 2.0, "retrieval": 2.5},
        {"sts": 4.0, "retrieval": 2.5},
    ]
    assert [p.mean_rank for p in grid] == [2.0, 2.5, 2.25, 3.25]
    assert best_point(grid) is grid[0]
    # equal mean ranks: the earliest point of the grid wins, whatever the order of the tasks
    tied = [point({"a": 0.9, "b": 0.1}, 0), point({"a": 0.1, "b": 0.9}, 1)]
    rank_points(tied, ["b", "a"])
    assert tied[0].mean_rank == tied[1].mean_rank == 1.5
    assert best_point(tied) is tied[0] and best_point(tied[::-1]) is tied[1]
    assert ordered(grid) == [grid[0], grid[2], grid[1], grid[3]]
    outside = rank_against(point({"sts": 0.85, "retrieval": 0.05}), grid)
    assert outside.ranks == {"sts": 2.0, "retrieval": 5.0} and outside.mean_rank == 3.5
    assert point({}).to_dict()["mean_rank"] != point({}).to_dict()["mean_rank"]  # NaN without tasks
    assert math.isnan(point({}).mean_rank)


def test_check_postprocess_canonical_and_refuses_auto() -> None:
    assert check_postprocess(["none", "Center", "whiten:0.3", "whiten", "center"]) == [
        "none",
        "center",
        "whiten:0.3",
        "whiten:auto",
    ]
    with pytest.raises(ValueError, match="'auto' cannot be tuned"):
        check_postprocess(["auto"])
    with pytest.raises(ValueError, match="postprocess"):
        check_postprocess(["sharpen"])
    with pytest.raises(ValueError, match="statistics file"):
        check_postprocess(["center", "mine.safetensors"])


def test_raw_vectors_are_computed_once_per_point(checkpoints, dev, own_cache, monkeypatch) -> None:
    base = KVEmbedder.from_pretrained(str(checkpoints["llama"]), layers=[2])
    calls: Counter[tuple[str, str, tuple[str, ...]]] = Counter()
    original = KVEmbedder.encode

    def counting(self, texts, role=None, **kwargs):
        calls[(self.fingerprint, str(role), tuple(texts))] += 1
        assert self.config.postprocess == "none"  # only raw vectors are ever encoded
        return original(self, texts, role, **kwargs)

    monkeypatch.setattr(KVEmbedder, "encode", counting)
    paths = {k: dev[k] for k in ("sts", "classification", "clustering")}
    result = tune(
        base,
        paths,
        windows=[[1], [3, 4]],
        biases=[0.0, 2.0],
        postprocesses=["none", "center", "whiten:0.3"],
        cache=EmbeddingCache(None),  # no disk cache: a second encode would show
        save=False,
    )
    assert len(result.grid) == 3 * 2 * 3  # windows [1], [3, 4] and the start [2]; two biases; three variants
    assert max(calls.values()) == 1  # every input list of every point encoded once
    per_point = Counter(fingerprint for fingerprint, _, _ in calls)
    # 3 x 2 grid points, the start (bias 1, not in the grid) and re-routing off (one pooling)
    assert len(per_point) == 3 * 2 + 1 + 1
    # sts: two sides; classification: train and test; clustering: its texts; the calibration texts, once (not
    # for the start, scored only with its own post-processing, none)
    assert Counter(per_point.values()) == {6: 3 * 2 + 1, 5: 1}
    assert result.baseline.bias == 1.0 and result.baseline.layers == [2] and result.baseline.postprocess == "none"
    assert result.no_rerouting.bias == OFF_BIAS
    assert result.no_rerouting.postprocess == result.best.postprocess
    assert set(result.best.scores) == {"sts", "classification", "clustering"}
    assert len({p.postprocess for p in result.grid}) == 3
    # the three variants of one point (its raw vectors) really are different vectors
    first = result.grid[:3]
    assert [p.postprocess for p in first] == ["none", "center", "whiten:0.3"] and len({p.layers[0] for p in first}) == 1
    assert len({tuple(p.scores.values()) for p in first}) > 1


def test_saved_winner_drives_layers_tuned_with_its_postprocessing(checkpoints, dev, own_cache) -> None:
    model = str(checkpoints["mistral"])
    base = KVEmbedder.from_pretrained(model, layers=[2])
    result = tune(
        base,
        {k: dev[k] for k in ("sts", "retrieval", "classification")},
        windows=[[1], [3, 4]],
        biases=[0.0, 1.0],
        poolings=["hybrid", "last"],
        postprocesses=["center", "whiten:0.3"],  # the winner post-processes, whichever wins
        options=None,
        limits={"classification": 12},
    )
    best = result.best
    saved = json.loads(Path(result.saved_to).read_text())
    assert (saved["layers"], saved["bias"], saved["pooling"], saved["postprocess"]) == (
        best.layers,
        best.bias,
        best.pooling,
        best.postprocess,
    )
    assert saved["tuning_set"]["classification"]["limit"] == 12 and "objective" in saved
    tuned = KVEmbedder.from_pretrained(model, layers="tuned")  # postprocess "auto": the tuned one
    assert (tuned.layers, tuned.bias, tuned.pooling) == (best.layers, best.bias, best.pooling)
    assert tuned.config.postprocess == best.postprocess
    assert tuned.describe()["provenance"] == {
        "layers": "tuned",
        "bias": "tuned",
        "pooling": "tuned",
        "postprocess": "tuned",
    }
    assert tuned.describe()["postprocess"]["spec"]["kind"] == best.postprocess.split(":")[0]
    # the tuned embedder gives the vectors the tune scored: same statistics (cached by the tune), same scores
    pairs = load_sts(dev["sts"])
    assert evaluate_sts(tuned, pairs).score == pytest.approx(best.scores["sts"], abs=1e-6)
    train, test, _ = load_classification(dev["classification"], limit=12)
    assert evaluate_classification(tuned, train, test).score == pytest.approx(best.scores["classification"])
    # an explicit post-processing still wins over the tuned one
    explicit = KVEmbedder.from_pretrained(model, layers="tuned", postprocess="none")
    assert explicit.postprocess_stats is None and explicit.describe()["provenance"]["postprocess"] == "none"
    other = "center" if best.postprocess != "center" else "whiten:0.3"
    given = KVEmbedder.from_pretrained(model, layers="tuned", postprocess=other)
    assert given.config.postprocess == other and given.describe()["provenance"]["postprocess"] != "tuned"
    # a store entry with an impossible post-processing is ignored, like any unreadable entry
    path = tuned_path(tuned.source, tuned.num_layers)
    path.write_text(json.dumps({**saved, "postprocess": "sharpen"}))
    with pytest.warns(RuntimeWarning, match="ignoring the tuned configuration"):
        assert load_tuned(tuned.source, tuned.num_layers) is None


def test_cli_tune_mixed_end_to_end(checkpoints, dev, own_cache, tmp_path, capsys) -> None:
    model = str(checkpoints["gemma3"])
    out = tmp_path / "mixed.json"
    data = [f"--{family}={dev[family]}" for family in ("sts", "retrieval", "classification", "clustering")]
    grid = ["--model", model, "--windows", "1;3,4", "--biases", "0,1", "--poolings", "hybrid,last", "-q"]
    argv = ["tune", "mixed", *data, *grid, "--postprocess", "none,center"]
    limits = ["--limit", "sts=6,retrieval=3,classification=12", "--sample", "--seed", "1", "--corpus-limit", "10"]
    assert main([*argv, *limits, "--json", str(out), "--top", "3"]) == 0
    printed = capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert [t["task"] for t in payload["tasks"]] == ["sts", "retrieval", "classification", "clustering"]
    assert payload["tasks"][0]["limit"] == 6 and payload["tasks"][0]["sample"] and payload["tasks"][0]["seed"] == 1
    assert payload["tasks"][1]["corpus_limit"] == 10 and payload["tasks"][3]["limit"] is None
    points = payload["grid"]
    assert len(points) >= 2 * 2 * 2 * 2 and {p["postprocess"] for p in points} == {"none", "center"}
    lowest = min(p["mean_rank"] for p in points)
    assert payload["best"]["mean_rank"] == lowest
    assert payload["best"] == next(p for p in points if p["mean_rank"] == lowest)  # the first of equals
    header = next(line for line in printed.splitlines() if line.startswith("layers"))
    families = [t["task"] for t in payload["tasks"]]
    assert header.split() == ["layers", "bias", "pooling", "postprocess", *families, "mean", "rank"]
    table = printed.splitlines()[2:5]
    assert len(table) == 3 and "start (ranked against the grid):" in printed.splitlines()[5]  # --top 3
    assert "no re-routing" in printed and "best: layers" in printed and "saved as" in printed
    tuned = KVEmbedder.from_pretrained(model, layers="tuned")
    assert tuned.describe()["provenance"]["postprocess"] == "tuned"
    assert tuned.config.postprocess == payload["best"]["postprocess"]
    before = tuned_path(tuned.source, tuned.num_layers).read_text()
    # --no-save: the JSON is written, the store is untouched
    other = tmp_path / "other.json"
    assert main([*argv[:-2], "--postprocess", "whiten:0.3", "--no-save", "--json", str(other)]) == 0
    assert json.loads(other.read_text())["saved_to"] is None
    assert tuned_path(tuned.source, tuned.num_layers).read_text() == before
    assert "saved as" not in capsys.readouterr().out
    # usage errors, before any model loads
    assert main(["tune", "mixed", "--model", model]) == 2  # no dev set
    assert main(["tune", "mixed", str(dev["sts"]), *data, "--model", model]) == 2  # a path belongs to one family
    assert main(["tune", "sts", "--model", model]) == 2  # sts needs its path
    assert main(["tune", "sts", str(dev["sts"]), f"--retrieval={dev['retrieval']}", "--model", model]) == 2
    assert main([*argv, "--limit", "sts=x"]) == 2
    assert main([*argv, "--limit", "qa=3"]) == 2
    assert main(["tune", "mixed", f"--sts={dev['sts']}", "--model", model, "--limit", "retrieval=3"]) == 2
    assert main(["tune", "sts", str(dev["sts"]), "--model", model, "--limit", "sts=3"]) == 2
    assert main([*argv[:-2], "--postprocess", "auto"]) == 2
    assert main([*argv[:-2], "--postprocess", "none,sharpen"]) == 2
    assert main(["tune", "mixed", f"--sts={tmp_path / 'missing.tsv'}", "--model", model]) == 2
    assert main(["tune", "mixed", "--model", model, "--reset", "-q"]) == 0
    assert load_tuned(tuned.source, tuned.num_layers) is None
    assert np.isfinite([p["mean_rank"] for p in points]).all()
