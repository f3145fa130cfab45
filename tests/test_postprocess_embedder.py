"""The post-processing stage inside the embedder: fitted before construction, applied to every caller's vectors."""

from __future__ import annotations

import numpy as np
import pytest

from kvembed_rag import EmbedderMismatchError, KVEmbedConfig, KVEmbedder, VectorIndex
from kvembed_rag import postprocess as pp
from kvembed_rag.errors import ConfigError

TEXTS = ["a short text", "another, somewhat longer text about retrieval", "", "numbers 1 2 3", "the end"]


def test_config_spelling_is_checked_and_canonical() -> None:
    assert KVEmbedConfig().postprocess == "auto"
    assert KVEmbedConfig(postprocess="whiten").postprocess == "whiten:auto"
    assert KVEmbedConfig(postprocess="remove-top").postprocess == "remove-top:1"
    assert KVEmbedConfig(postprocess="Center@16").postprocess == "center@16"
    for bad in ("sharpen", "center:2", "remove-top:0", "whiten:2", "none@8", "center@x", ""):
        with pytest.raises(ConfigError, match="postprocess"):
            KVEmbedConfig(postprocess=bad)
    for text in ("none", "center", "remove-top:3", "whiten:auto", "whiten:0.5@8", "center@16"):
        assert pp.spec_text(pp.parse_spec(text)) == text


def test_centred_vectors_are_applied_for_every_caller_and_batch_invariant(make_embedder, own_cache) -> None:
    raw = make_embedder("llama", method="kv")
    centred = raw.variant(postprocess="center")
    assert centred.provenance["postprocess"] == "fitted"
    stats = centred.postprocess_stats
    from kvembed_rag.layer_selection import load_calibration

    assert stats is not None and stats.n == len(load_calibration())  # the shipped calibration texts
    expected = pp.apply(raw.encode(TEXTS), stats)
    np.testing.assert_allclose(centred.encode(TEXTS), expected, atol=1e-6)
    alone = np.stack([centred.encode(t) for t in TEXTS])
    np.testing.assert_allclose(alone, centred.encode(TEXTS), atol=1e-5)  # batched = alone
    np.testing.assert_allclose(np.linalg.norm(centred.encode(TEXTS), axis=1), 1.0, atol=1e-5)
    # the same configuration later reads its cached statistics: identical, deterministic
    again = raw.variant(postprocess="center")
    assert again.provenance["postprocess"] == "cached"
    assert again.postprocess_stats is not None and again.postprocess_stats.fingerprint == stats.fingerprint
    # post-processing is part of what determines the vectors
    assert centred.fingerprint != raw.fingerprint
    assert centred.describe()["postprocess"]["fingerprint"] == stats.fingerprint
    assert raw.describe()["postprocess"] is None


def test_auto_is_none_where_nothing_is_shipped_and_the_default_where_it_is(make_embedder, monkeypatch) -> None:
    raw = make_embedder("llama", method="kv")  # a tiny random model: nothing shipped for it
    assert raw.config.postprocess == "none" and raw.provenance["postprocess"] == "none"
    key = pp.stats_key(raw.describe())
    # the shipped table is read by the resolution in postprocess.files
    monkeypatch.setattr(pp.files, "shipped_default", lambda k: pp.PostprocessSpec("center") if k == key else None)
    monkeypatch.setattr(
        pp.files,
        "shipped_stats",
        lambda k, spec: pp.PostprocessStats(spec, np.zeros(raw.hidden_size, np.float32), None, 9),
    )
    chosen = raw.variant(postprocess="auto")
    assert chosen.config.postprocess == "center" and chosen.provenance["postprocess"] == "shipped-default"
    assert chosen.describe()["postprocess"]["n"] == 9


def test_auto_fits_the_backbones_shipped_spec_for_a_setting_nothing_was_shipped_for(make_embedder, monkeypatch):
    raw = make_embedder("llama", method="kv", layers=[1])
    key = pp.stats_key(raw.describe())
    other = {**key, "layers": [0], "bias": 2.0}  # the same backbone and method, another window and bias
    entry = {"default": True, "key": other, "spec": pp.PostprocessSpec("center").to_dict(), "file": "x"}
    monkeypatch.setattr(pp.files, "_shipped_index", lambda: [entry])
    assert pp.shipped_default(key) is None and pp.model_default(key) == pp.PostprocessSpec("center")
    chosen = raw.variant(postprocess="auto")  # not raw vectors: the backbone's spec, fitted for this window
    assert chosen.config.postprocess == "center" and chosen.provenance["postprocess"] == "model-default"
    assert chosen.postprocess_stats is not None and chosen.postprocess_stats.n == 222
    assert np.allclose(chosen.postprocess_stats.mean, raw.variant(postprocess="center").postprocess_stats.mean)
    # another method, or defaults that disagree on the spec: nothing to carry over, raw vectors as before
    assert pp.model_default({**key, "method": "prompteol"}) is None
    disagreeing = {**entry, "key": {**other, "layers": [1, 2]}, "spec": pp.PostprocessSpec("whiten").to_dict()}
    monkeypatch.setattr(pp.files, "_shipped_index", lambda: [entry, disagreeing])
    assert raw.variant(postprocess="auto").config.postprocess == "none"


def test_zero_mean_centring_is_the_identity(make_embedder) -> None:
    raw = make_embedder("qwen3", method="prompteol")
    zero = pp.PostprocessStats(pp.PostprocessSpec("center"), np.zeros(raw.hidden_size, np.float32), None, 1)
    given = KVEmbedder(
        raw.model, raw.tokenizer, raw.config.replace(postprocess="center"), source=raw.source, postprocess_stats=zero
    )
    np.testing.assert_allclose(given.encode(TEXTS), raw.encode(TEXTS), atol=1e-6)
    assert given.provenance["postprocess"] == "given"


def test_reduced_width_and_corpus_fit(make_embedder, own_cache) -> None:
    raw = make_embedder("mistral", method="kv")
    small = raw.variant(postprocess="center@8")
    assert small.dim == 8 and small.encode(TEXTS).shape == (len(TEXTS), 8)
    # PCA directions come ordered by variance: the first k coordinates are the @k post-processing
    smaller = raw.variant(postprocess="center@4")
    np.testing.assert_allclose(small.reduce_dimensions(small.encode(TEXTS), 4), smaller.encode(TEXTS), atol=1e-5)
    assert small.reducible and not raw.variant(postprocess="center").reducible
    corpus = raw.fit_postprocess([f"corpus document {i} about topic {i % 4}" for i in range(20)])
    assert corpus.provenance["postprocess"] == "given" and corpus.config.postprocess == "center"
    assert corpus.fingerprint != raw.variant(postprocess="center").fingerprint  # other statistics, other vectors
    assert corpus.variant(batch_tokens=512).postprocess_stats is corpus.postprocess_stats


def test_a_planted_statistics_file_for_another_configuration_is_refused(make_embedder, own_cache) -> None:
    raw = make_embedder("gemma3", method="kv")
    fitted = raw.variant(postprocess="center")
    assert fitted.provenance["postprocess"] == "fitted"
    from kvembed_rag._io import cache_root

    (path,) = (cache_root() / "postprocess").glob("*.safetensors")
    wrong = pp.PostprocessStats(pp.PostprocessSpec("center"), np.ones(raw.hidden_size, np.float32), None, 3)
    pp.save(path, wrong, key={"model": "someone else's"})  # planted over the cache entry
    with pytest.warns(RuntimeWarning, match="unusable"):
        again = raw.variant(postprocess="center")
    assert again.provenance["postprocess"] == "fitted"
    assert (
        again.postprocess_stats is not None
        and again.postprocess_stats.fingerprint == fitted.postprocess_stats.fingerprint
    )
    with pytest.raises(pp.PostprocessMismatchError):
        pp.load(path, key={"model": "mine"})


def test_an_index_refuses_queries_from_another_post_processing(make_embedder, own_cache) -> None:
    raw = make_embedder("llama", method="kv")
    centred = raw.variant(postprocess="center")
    index = VectorIndex(centred.dim, embedder=centred.describe())
    index.upsert(["a", "b"], centred.encode(TEXTS[:2]), TEXTS[:2])
    from kvembed_rag.retrieval.vector_index import check_compatible

    check_compatible(index.embedder, centred.describe())
    with pytest.raises(EmbedderMismatchError, match="postprocess"):
        check_compatible(index.embedder, raw.describe())


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KVEMBED_CACHE", str(tmp_path / "cache"))


def test_a_reduction_the_calibration_cannot_determine_is_refused_and_a_stale_cached_one_refitted(
    make_embedder, own_cache, monkeypatch, tmp_path
) -> None:
    import hashlib
    import json

    import kvembed_rag.layer_selection as selection

    raw = make_embedder("llama", method="kv")
    few = selection.load_calibration()[:10]  # 10 texts determine 9 principal directions
    monkeypatch.setattr(selection, "load_calibration", lambda: few)
    assert raw.variant(postprocess="whiten:0.3@9").dim == 9
    with pytest.raises(ConfigError, match=r"whiten:0\.3@12.*determine only 9.*fit_postprocess"):
        raw.variant(postprocess="whiten:0.3@12")
    # a cache entry an older release wrote for that spec (arbitrary directions) is not used either
    spec = pp.PostprocessSpec("whiten", shrinkage=0.3, dim=12)
    projection = np.eye(raw.hidden_size, 12, dtype=np.float32)
    stale = pp.PostprocessStats(spec, np.zeros(raw.hidden_size, np.float32), projection, 10)
    key = pp.stats_key(raw.describe())
    digest = hashlib.sha256(json.dumps({"key": key, "spec": spec.to_dict()}, sort_keys=True).encode()).hexdigest()
    pp.save(tmp_path / "cache" / "postprocess" / f"{digest[:24]}.safetensors", stale, key=key)
    with pytest.warns(RuntimeWarning, match="unusable"), pytest.raises(ConfigError, match="determine only 9"):
        raw.variant(postprocess="whiten:0.3@12")
