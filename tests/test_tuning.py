"""kvembed-rag tune: the grid, the saved default and how embedders pick it up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dev_pairs import STS_PAIRS

from kvembed_rag import ConfigError, KVEmbedder
from kvembed_rag.cli import main
from kvembed_rag.eval.tuning import (
    OFF_BIAS,
    TunePoint,
    TuneResult,
    candidate_windows,
    format_tune,
    tune,
)
from kvembed_rag.tuned import load_tuned, tuned_path

PAIRS = STS_PAIRS


@pytest.fixture
def sts_file(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS))
    return path


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A private cache: a saved tuning must not leak into other tests' embedders of the same checkpoint."""
    monkeypatch.setenv("KVEMBED_CACHE", str(tmp_path / "cache"))


def test_candidate_windows():
    assert candidate_windows(10, 2) == [[2, 3], [3, 4], [4, 5], [5, 6], [6, 7], [7, 8], [8, 9]]
    assert candidate_windows(30, 1, stride=10) == [[6], [16], [26]]
    assert len(candidate_windows(40, 3)) <= 8
    with pytest.raises(ValueError, match="does not fit"):
        candidate_windows(4, 4)


def test_tune_scores_the_grid_saves_the_winner_and_tuned_uses_it(checkpoints, sts_file, own_cache):
    model = str(checkpoints["llama"])
    base = KVEmbedder.from_pretrained(model, layers=[2])
    result = tune(base, {"sts": sts_file}, windows=[[1], [2, 3], [4]], biases=[0.0, 2.0])
    assert len(result.grid) == 3 * 2 + 2  # the starting window [2] joins the grid
    # one task: the mean rank is the rank, so the best score wins (the first of equals)
    best_score = max(p.scores["sts"] for p in result.grid)
    assert result.best.scores["sts"] == best_score and result.best.ranks == {"sts": 1.0}
    assert result.best is next(p for p in result.grid if p.scores["sts"] == best_score)
    assert result.baseline.layers == [2] and result.baseline.bias == 1.0
    assert result.no_rerouting.bias == OFF_BIAS
    # the grid is real: bias -1e4 equals the prompt without re-routing, so scores differ across the grid
    assert len({round(p.scores["sts"], 6) for p in result.grid}) > 1
    saved = json.loads(Path(result.saved_to).read_text())
    assert saved["layers"] == result.best.layers and saved["bias"] == result.best.bias
    assert "postprocess" not in saved  # not searched, so not tuned: postprocess="auto" still decides
    tuned = KVEmbedder.from_pretrained(model, layers="tuned")  # no bias given: the tuned one
    assert (tuned.layers, tuned.bias) == (result.best.layers, result.best.bias) and tuned.tuned
    assert tuned.describe()["layers"] == result.best.layers
    assert tuned.describe()["provenance"] == {
        "layers": "tuned",
        "bias": "tuned",
        "pooling": "tuned",
        "postprocess": "none",
    }
    explicit = KVEmbedder.from_pretrained(model, layers="tuned", bias=5.0)
    assert explicit.bias == 5.0 and explicit.layers == result.best.layers
    assert explicit.describe()["provenance"]["bias"] == "given"
    # "auto" is the middle-depth window whatever this machine has tuned: the same vectors everywhere
    auto = KVEmbedder.from_pretrained(model)
    assert not auto.tuned and auto.describe()["provenance"]["layers"] == "middle-depth"
    assert auto.layers == KVEmbedder.from_pretrained(model, layers="middle").layers
    assert load_tuned(tuned.source, tuned.num_layers) is not None


def test_tuned_without_a_saved_tuning_fails_and_a_corrupt_file_is_ignored(checkpoints, own_cache):
    model = str(checkpoints["qwen3"])
    with pytest.raises(ConfigError, match="run 'kvembed-rag tune' first"):
        KVEmbedder.from_pretrained(model, layers="tuned")
    embedder = KVEmbedder.from_pretrained(model, layers=[2])
    path = tuned_path(embedder.source, embedder.num_layers)
    path.parent.mkdir(parents=True)
    path.write_text('{"layers": [99], "bias": 1}')
    with pytest.warns(RuntimeWarning, match="ignoring the tuned configuration"), pytest.raises(ConfigError):
        KVEmbedder.from_pretrained(model, layers="tuned")
    fresh = KVEmbedder.from_pretrained(model)  # "auto" never reads the store
    assert not fresh.tuned and max(fresh.layers) < fresh.num_layers


def test_cli_tune_prints_grid_writes_json_and_resets(checkpoints, sts_file, own_cache, tmp_path, capsys):
    model = str(checkpoints["mistral"])
    out = tmp_path / "grid.json"
    argv = ["tune", "sts", str(sts_file), "--model", model, "--windows", "1;2,3", "--biases", "0,1", "-q"]
    assert main([*argv, "--poolings", "hybrid,last", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "best: layers" in printed and "no re-routing" in printed and "--layers tuned" in printed
    payload = json.loads(out.read_text())
    header = next(line for line in printed.splitlines() if line.startswith("layers"))
    assert header.split() == ["layers", "bias", "pooling", "postprocess", "sts", "mean", "rank"]
    assert f"{payload['best']['pooling']} pooling" in printed
    assert set(payload["no_rerouting_by_pooling_and_postprocess"]) == {
        "hybrid none",
        "last none",
    }  # the tiny model ships no statistics
    assert payload["no_rerouting"]["pooling"] == payload["best"]["pooling"]
    scores = [p["scores"]["sts"] for p in payload["grid"]]
    assert len(scores) >= 8 and payload["best"]["scores"]["sts"] == max(scores)
    assert {p["pooling"] for p in payload["grid"]} == {"hybrid", "last"}
    tuned = KVEmbedder.from_pretrained(model, layers="tuned")
    assert tuned.tuned and tuned.pooling == payload["best"]["pooling"]
    assert KVEmbedder.from_pretrained(model, layers="tuned", pooling="mean").pooling == "mean"
    assert main([*argv[:4], "--model", model, "--poolings", "max"]) == 2
    assert main(["tune", "sts", str(sts_file), "--model", model, "--reset", "-q"]) == 0
    assert load_tuned(tuned.source, tuned.num_layers) is None
    assert main([*argv[:4], "--model", model, "--windows", "1;x"]) == 2
    assert main([*argv[:4], "--model", model, "--biases", "a"]) == 2
    assert main([*argv[:4], "--model", model, "--sample"]) == 2  # --sample needs --limit
    sampled = tmp_path / "sampled.json"
    assert main([*argv, "--limit", "4", "--sample", "--seed", "3", "--no-save", "--json", str(sampled)]) == 0
    (drawn,) = json.loads(sampled.read_text())["tasks"]
    assert (drawn["task"], drawn["limit"], drawn["sample"], drawn["seed"]) == ("sts", 4, True, 3)
    assert load_tuned(tuned.source, tuned.num_layers) is None  # --no-save
    assert main(["tune", "sts", str(tmp_path / "missing.tsv"), "--model", model]) == 2


def test_format_tune_ranks_the_grid_and_shows_the_rerouting_gain() -> None:
    grid = [
        TunePoint([4, 5], 1.0, "hybrid", "none", {"sts": 0.70}),
        TunePoint([4, 5], 1.0, "last", "none", {"sts": 0.80}),
        TunePoint([8, 9], 1.0, "hybrid", "none", {"sts": 0.75}),
    ]
    for point, rank in zip(grid, (3.0, 1.0, 2.0), strict=True):
        point.ranks = {"sts": rank}
    off = TunePoint([4, 5], OFF_BIAS, "last", "none", {"sts": 0.78}, {"sts": 2.0})
    task = {"task": "sts", "dataset": "d", "metric": "spearman"}
    text = format_tune(TuneResult("m", [task], grid, grid[0], off))
    lines = text.splitlines()
    assert lines[1].split() == ["layers", "bias", "pooling", "postprocess", "sts", "mean", "rank"]
    assert [line.split()[:3] for line in lines[2:5]] == [
        ["4,5", "1", "last"],
        ["8,9", "1", "hybrid"],
        ["4,5", "1", "hybrid"],
    ]
    assert "best: layers [4, 5] bias 1 last pooling, post-processing none" in text
    assert "re-routing adds: sts +0.0200" in text and "note:" not in text
    alone = TuneResult("m", [task], grid[:1], grid[0], TunePoint([4, 5], OFF_BIAS, "hybrid", "none", {"sts": 0.9}))
    assert "note: re-routing does not beat the prompt alone" in format_tune(alone)
