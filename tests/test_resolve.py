"""Resolution before construction: a ResolvedConfig with concrete types, built without building an embedder,
and the one artifact lookup (shipped -> cache -> compute, with a file lock) every cache goes through."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kvembed_rag import KVEmbedConfig, KVEmbedder
from kvembed_rag.artifacts import artifact_path, cached_artifact
from kvembed_rag.config import ResolvedConfig
from kvembed_rag.errors import ConfigError
from kvembed_rag.resolve import resolve

TEXTS = ["The quick brown fox.", "Embeddings of long documents.", "A query about meetings?"]


def test_an_unresolved_config_is_refused_naming_what_is_left() -> None:
    with pytest.raises(ConfigError, match=r"layers, bias, pooling, prompts, max_length, padding_side"):
        ResolvedConfig.of(KVEmbedConfig())
    concrete = KVEmbedConfig(layers=[1], bias=1.0, pooling="last", max_length=64, padding_side="left")
    with pytest.raises(ConfigError, match="prompts"):
        ResolvedConfig.of(concrete)


def test_resolution_builds_no_embedder_and_gives_concrete_types(make_embedder, monkeypatch) -> None:
    loaded = make_embedder("llama", layers=[1])
    built = []
    real_init = KVEmbedder.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(KVEmbedder, "__init__", counting_init)
    requested = KVEmbedConfig(model="tiny", layers="id", postprocess="center")
    resolved = resolve(loaded.model, loaded.tokenizer, requested, source=loaded.source)
    assert built == []  # the calibration pass and the statistics fit ran through Forward, not an embedder
    assert isinstance(resolved.layers, tuple) and all(isinstance(i, int) for i in resolved.layers)
    assert isinstance(resolved.bias, float) and resolved.pooling == "hybrid" and resolved.max_length > 0
    assert resolved.provenance["layers"] == "intrinsic-dimension" and resolved.layer_selection is not None
    assert resolved.postprocess == "center" and resolved.postprocess_stats is not None
    assert resolved.provenance["postprocess"] in ("fitted", "cached")
    # the same vectors whether the embedder resolves the config itself or is handed the resolution
    monkeypatch.setattr(KVEmbedder, "__init__", real_init)
    given = KVEmbedder(loaded.model, loaded.tokenizer, resolved, source=loaded.source)
    itself = KVEmbedder(loaded.model, loaded.tokenizer, requested, source=loaded.source)
    provenance = {k: v for k, v in given.provenance.items() if k != "postprocess"}  # "fitted", then "cached"
    assert {**given.describe(), "provenance": provenance} == {**itself.describe(), "provenance": provenance}
    assert itself.provenance["postprocess"] == "cached"  # the first resolution's fit was kept
    np.testing.assert_array_equal(given.encode(TEXTS), itself.encode(TEXTS))
    with pytest.raises(TypeError, match="ResolvedConfig is final"):
        KVEmbedder(loaded.model, loaded.tokenizer, resolved, bias=2.0)


def test_cached_artifact_computes_once_then_reads_the_cache(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        return "value"

    def lookup() -> tuple[str, str]:
        return cached_artifact(
            "things",
            {"k": 1},
            suffix=".txt",
            read=lambda path: path.read_text(),
            write=lambda path, value: path.write_text(value),
            compute=compute,
        )

    assert lookup() == ("value", "computed")
    assert lookup() == ("value", "cached") and len(calls) == 1
    assert artifact_path("things", {"k": 1}, ".txt").read_text() == "value"


def test_shipped_wins_and_no_cache_writes_nothing() -> None:
    found = cached_artifact(
        "shipped-things",
        {"k": 2},
        suffix=".txt",
        shipped=lambda: "from the package",
        read=lambda path: path.read_text(),
        write=lambda path, value: path.write_text(value),
        compute=lambda: "computed",
    )
    assert found == ("from the package", "shipped")
    computed = cached_artifact(
        "uncached",
        {"k": 3},
        suffix=".txt",
        read=lambda path: path.read_text(),
        write=lambda path, value: path.write_text(value),
        compute=lambda: "computed",
        use_cache=False,
    )
    assert computed == ("computed", "computed") and not artifact_path("uncached", {"k": 3}, ".txt").exists()


def test_a_damaged_cache_file_is_reported_and_recomputed() -> None:
    path = artifact_path("numbers", {"k": 4}, ".txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a number")
    with pytest.warns(RuntimeWarning, match="unusable"):
        value, how = cached_artifact(
            "numbers",
            {"k": 4},
            suffix=".txt",
            read=lambda p: float(p.read_text()),
            write=lambda p, v: p.write_text(str(v)),
            compute=lambda: 4.0,
        )
    assert (value, how) == (4.0, "computed") and path.read_text() == "4.0"


def test_concurrent_lookups_compute_once_behind_the_file_lock() -> None:
    calls: list[int] = []
    results: list[tuple[str, str]] = []

    def compute() -> str:
        calls.append(1)
        time.sleep(0.3)  # the second caller arrives while this one holds the lock
        return "slow value"

    def lookup() -> None:
        results.append(
            cached_artifact(
                "locked",
                {"k": 5},
                suffix=".txt",
                read=lambda path: path.read_text(),
                write=lambda path, value: path.write_text(value),
                compute=compute,
            )
        )

    threads = [threading.Thread(target=lookup) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(how for _, how in results) == ["cached", "computed"]


def test_describe_states_what_batch_invariance_holds_in_its_dtype(make_embedder) -> None:
    from kvembed_rag.config import NOT_VECTOR_FIELDS

    exact = make_embedder("llama", layers=[1], dtype="float32").describe()
    rounded = make_embedder("llama", layers=[1], dtype="bfloat16").describe()
    assert exact["batch_invariance"].startswith("float32") and rounded["batch_invariance"].startswith("bfloat16")
    assert "batch_tokens=1" in rounded["batch_invariance"]
    assert "batch_invariance" in NOT_VECTOR_FIELDS  # a statement about the dtype, not part of the vectors' identity
