"""TwoNN estimator, the selection rule, the on-disk cache, layers='auto' and the select-layers command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kvembed_rag import KVEmbedder
from kvembed_rag.cli import main
from kvembed_rag.layer_selection import (
    choose_proxy_window,
    choose_window,
    default_window,
    half_retrieval_scores,
    load_calibration,
    middle_window,
    proxy_windows,
    select_layers,
    split_halves,
    twonn,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_twonn_plane_in_64d_is_two(seed):
    rng = np.random.default_rng(seed)
    plane = rng.normal(size=(2000, 2)) @ rng.normal(size=(2, 64))
    assert abs(twonn(plane) - 2.0) <= 0.2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_twonn_five_dimensional_gaussian_is_five(seed):
    points = np.random.default_rng(seed).normal(size=(2000, 5))
    assert abs(twonn(points) - 5.0) <= 0.5


def test_twonn_ignores_duplicates_instead_of_collapsing():
    rng = np.random.default_rng(3)
    plane = rng.normal(size=(800, 2)) @ rng.normal(size=(2, 32))
    with_copies = np.vstack([plane, plane[:400], plane[:100]])
    assert twonn(with_copies) == pytest.approx(twonn(plane), abs=1e-9)
    assert twonn(with_copies) > 1.5  # the naive estimate collapses to ~1 here


def test_twonn_degenerate_inputs():
    assert math.isnan(twonn(np.zeros((10, 4))))  # one distinct point
    assert math.isnan(twonn(np.eye(2)))
    with pytest.raises(ValueError, match="2-D"):
        twonn(np.zeros(5))


def test_window_skips_first_fifth_and_takes_the_minimum():
    curve = [1.0, 2.0, 9.0, 9.0, 8.0, 4.0, 7.0, 8.0, 9.0, 9.0]  # layers 0-1 lowest but skipped
    assert choose_window(curve, 10) == [5, 6]  # floor(0.1 * 10) = 1 more layer


def test_window_ties_go_to_the_earliest_layer():
    curve = [9.0] * 5 + [3.0, 5.0, 3.0 + 1e-9, 3.0, 9.0] + [9.0] * 10
    assert choose_window(curve, 20) == [5, 6, 7]


def test_flat_curve_gives_the_default_window():
    assert choose_window([4.0] * 18, 18) == default_window(18) == [4, 5]


def test_middle_window_is_a_tenth_of_the_depth_centred_on_the_middle_layer():
    assert middle_window(18) == [8, 9]  # Gemma-3-270M's dev winner
    assert middle_window(30) == [14, 15, 16]  # SmolLM2-135M's dev winner
    assert middle_window(1) == [0] and middle_window(2) == [1] and middle_window(5) == [2]
    for layers in range(1, 81):
        window = middle_window(layers)
        assert window == list(range(window[0], window[-1] + 1)) and window[0] >= 0 and window[-1] < layers
        assert len(window) == max(1, round(layers / 10 + 1e-9)) and window[0] <= layers // 2 <= window[-1]
    with pytest.raises(ValueError, match="at least one layer"):
        middle_window(0)


def test_layers_middle_resolves_without_a_calibration_pass(checkpoints, cache_dir):
    embedder = KVEmbedder.from_pretrained(str(checkpoints["llama"]), method="kv", layers="middle")
    assert embedder.layers == middle_window(embedder.num_layers)
    assert embedder.describe()["provenance"]["layers"] == "middle-depth"
    assert not (cache_dir / "layers").exists()  # no intrinsic-dimension pass ran
    assert embedder.variant(layers="middle").layers == embedder.layers


def test_window_is_clipped_at_the_last_layer():
    curve = [9.0] * 19 + [1.0]
    assert choose_window(curve, 20) == [19]


def test_nan_layers_are_never_chosen_and_all_nan_falls_back():
    curve = [9.0, 9.0, float("nan"), 5.0, float("nan"), 6.0, 7.0, 8.0, 9.0, 9.0]
    assert choose_window(curve, 10) == [3, 4]
    with pytest.warns(RuntimeWarning, match="default re-routing window"):
        assert choose_window([float("nan")] * 10, 10) == default_window(10)


def test_shipped_calibration_set_is_large_and_varied():
    texts = load_calibration()
    assert len(texts) >= 200
    assert len(set(texts)) == len(texts)
    assert not any(t.startswith("#") for t in texts)
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) <= 6 and max(lengths) >= 18  # short questions to long sentences


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KVEMBED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _embedder(checkpoints, arch="llama", **kwargs):
    return KVEmbedder.from_pretrained(str(checkpoints[arch]), method="kv", layers="default", **kwargs)


def test_cache_miss_then_hit(checkpoints, cache_dir):
    embedder = _embedder(checkpoints)
    first = select_layers(embedder)
    assert not first.cached and len(first.curve) == embedder.num_layers
    files = list((cache_dir / "layers").glob("*.json"))
    assert len(files) == 1
    second = select_layers(embedder)
    assert second.cached and second.layers == first.layers
    np.testing.assert_allclose(second.curve, first.curve, atol=1e-4)


def test_corrupted_cache_is_recomputed_with_a_warning(checkpoints, cache_dir):
    embedder = _embedder(checkpoints)
    first = select_layers(embedder)
    (path,) = (cache_dir / "layers").glob("*.json")
    path.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again = select_layers(embedder)
    assert not again.cached and again.layers == first.layers
    assert json.loads(path.read_text())["layers"] == first.layers  # rewritten


def test_cache_key_changes_with_calibration_and_preprocessing(checkpoints, cache_dir):
    embedder = _embedder(checkpoints)
    select_layers(embedder)
    select_layers(embedder, normalize=False)
    select_layers(embedder, load_calibration()[:50])
    assert len(list((cache_dir / "layers").glob("*.json"))) == 3


def test_id_layers_use_the_selection(checkpoints, cache_dir):
    by_id = KVEmbedder.from_pretrained(str(checkpoints["gemma3"]), method="kv", layers="id")
    assert by_id.layer_selection is not None
    assert by_id.layers == by_id.layer_selection.layers
    assert by_id.describe()["layers"] == by_id.layers
    assert by_id.describe()["provenance"]["layers"] == "intrinsic-dimension"
    # other methods do not pay for a calibration pass
    assert KVEmbedder.from_pretrained(str(checkpoints["gemma3"]), method="mean", layers="id").layer_selection is None


def test_auto_layers_are_the_middle_rule_without_a_calibration_pass(checkpoints, cache_dir):
    auto = KVEmbedder.from_pretrained(str(checkpoints["gemma3"]), method="kv")  # layers="auto", the default
    assert auto.layers == middle_window(auto.num_layers) and auto.layer_selection is None
    assert auto.describe()["provenance"]["layers"] == "middle-depth"
    assert auto.describe()["config"]["layers"] == auto.layers  # a resolved config records the window, not the rule
    assert not (cache_dir / "layers").exists()


def test_too_few_calibration_texts(checkpoints, cache_dir):
    with pytest.raises(ValueError, match="at least 3"):
        select_layers(_embedder(checkpoints), ["one", "two"])


def test_select_layers_command(checkpoints, cache_dir, tmp_path, capsys):
    model = str(checkpoints["qwen3"])
    assert main(["select-layers", "--model", model, "-q"]) == 0
    text = capsys.readouterr().out
    assert "ID rule (layers='id'):" in text and "layer   0" in text
    calibration = tmp_path / "calib.txt"
    calibration.write_text("\n".join(load_calibration()[:60]))
    plot = tmp_path / "id.png"
    assert (
        main(
            ["select-layers", "--model", model, "--calibration", str(calibration), "--plot", str(plot), "--json", "-q"]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert payload["n_texts"] == 60 and len(payload["curve"]) == 6 and payload["layers"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["select-layers", "--model", model, "--calibration", str(tmp_path / "none.txt")]) == 2


def test_packaged_selections_are_well_formed():
    from importlib.resources import files

    shipped = json.loads(files("kvembed_rag").joinpath("data/layer_selections.json").read_text())
    assert {entry["key"]["num_layers"] for entry in shipped} == {18, 30}  # Gemma-3-270M, SmolLM2-135M
    for entry in shipped:
        assert len(entry["curve"]) == entry["num_layers"] == entry["key"]["num_layers"]
        assert entry["layers"] == choose_window(entry["curve"], entry["num_layers"])  # the rule, recomputed
        assert len(entry["key"]["model"]) == 64  # keyed by the GGUF file's sha256, not by a name


# ------------------------------------------------------------------ the label-free proxy rule
def test_split_halves_cuts_at_the_middle_word_and_skips_short_texts():
    first, second = split_halves(["one two three four five", "too short", "a b c d"])
    assert first == ["one two", "a b"]
    assert second == ["three four five", "c d"]


def test_half_retrieval_scores_known_answers():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(50, 16))
    perfect = half_retrieval_scores(docs + 0.01 * rng.normal(size=docs.shape), docs)
    assert perfect == {"top1": 1.0, "mrr": 1.0}
    shuffled = half_retrieval_scores(docs[::-1].copy(), docs)  # every query points at another document
    assert shuffled["top1"] <= 0.04 and shuffled["mrr"] < 0.3
    tied = half_retrieval_scores(np.ones((4, 3)), np.ones((4, 3)))  # all equal: ties count against the right one
    assert tied["top1"] == 0.0
    with pytest.raises(ValueError, match="matching"):
        half_retrieval_scores(docs[:3], docs[:4])


def test_proxy_windows_follow_the_id_rule_candidates():
    windows = proxy_windows(18)
    assert windows[0] == [4, 5] and windows[-1] == [16, 17]
    assert all(len(w) == 2 for w in windows)
    assert proxy_windows(5, length=1) == [[1], [2], [3], [4]]
    assert choose_proxy_window({4: 0.5, 5: 0.7, 6: 0.7}, windows) == [5, 6]  # earliest of the best


def test_proxy_rule_on_a_tiny_model(checkpoints, cache_dir):
    embedder = _embedder(checkpoints, "gemma3")
    texts = load_calibration()[:40]
    selection = select_layers(embedder, texts, rule="proxy")
    assert selection.rule == "proxy" and not selection.cached
    assert selection.layers in proxy_windows(embedder.num_layers)
    starts = [w[0] for w in proxy_windows(embedder.num_layers)]
    assert all(0.0 < selection.curve[s] <= 1.0 for s in starts)
    assert all(math.isnan(v) for i, v in enumerate(selection.curve) if i not in starts)
    assert selection.curve[selection.layers[0]] == max(selection.curve[s] for s in starts)
    assert selection.off is not None and 0.0 < selection.off <= 1.0
    again = select_layers(embedder, texts, rule="proxy")
    assert again.cached and again.layers == selection.layers and again.off == pytest.approx(selection.off, abs=1e-4)
    # the ID rule's cache entry is separate and unchanged by the proxy
    assert select_layers(embedder, texts).rule == "id"
    with pytest.raises(ValueError, match="unknown layer-selection rule"):
        select_layers(embedder, texts, rule="ids")


def test_select_layers_command_prints_the_proxy_beside_the_id_curve(checkpoints, cache_dir, tmp_path, capsys):
    calibration = tmp_path / "calib.txt"
    calibration.write_text("\n".join(load_calibration()[:30]))
    model = str(checkpoints["llama"])
    assert main(["select-layers", "--model", model, "--calibration", str(calibration), "--proxy", "-q"]) == 0
    text = capsys.readouterr().out
    assert "proxy MRR" in text and "proxy rule:" in text and "ID rule (layers='id'):" in text and "middle rule:" in text
    assert main(["select-layers", "--model", model, "--calibration", str(calibration), "--proxy", "--json", "-q"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["rule"] == "id" and payload["proxy"]["rule"] == "proxy" and payload["proxy"]["layers"]
    assert payload["middle"] == middle_window(payload["num_layers"])
