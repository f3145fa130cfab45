"""KVEmbedConfig: one definition of every option, resolved before construction, and everything derived from it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from kvembed_rag import ConfigError, KVEmbedConfig, KVEmbedder, VectorIndex
from kvembed_rag.cli import build_parser
from kvembed_rag.cli.options import FLAG_TYPES as _FLAG_TYPES
from kvembed_rag.cli.options import config_from_args
from kvembed_rag.config import LOAD, RUNTIME, VECTORS, field_names, option_default
from kvembed_rag.embedder import ADAPTER_OPTIONS
from kvembed_rag.eval.mteb import MTEBEncoder
from kvembed_rag.prompts import KV_PROMPTS, PromptTemplate
from kvembed_rag.retrieval.documents import SourceDocument
from kvembed_rag.retrieval.pipeline import build_index, load_for_search, stored_config


def test_defaults_are_written_once_and_validated() -> None:
    config = KVEmbedConfig()
    assert (config.model, config.method, config.layers, config.bias, config.batch_tokens) == (
        "default",
        "kv",
        "auto",
        None,
        16_384,
    )
    assert not config.is_resolved
    assert KVEmbedConfig(layers="id").layers == "id"  # the intrinsic-dimension rule ("auto" until 2026-12-06)
    assert KVEmbedConfig(layers=" middle ").layers == "middle" and KVEmbedConfig(layers=None).layers == "auto"
    assert KVEmbedConfig(layers="3, 4").layers == (3, 4) and KVEmbedConfig(layers=[5]).layers == (5,)
    assert KVEmbedConfig(method="Token_Prepending").method == "token-prepending"
    assert KVEmbedConfig(prompts="Q: {text}").prompts == PromptTemplate("Q: {text}", "Q: {text}")
    assert KVEmbedConfig(prompts={"query": "Q: {text}"}).prompts == PromptTemplate(KV_PROMPTS.document, "Q: {text}")
    for bad, name in (
        ({"method": "nope"}, "unknown method"),
        ({"layers": "sometimes"}, "layers"),
        ({"layers": [1.5]}, "layer indices"),
        ({"bias": "x"}, "bias"),
        ({"bias": float("nan")}, "bias"),
        ({"pooling": "max"}, "pooling"),
        ({"prompts": "no slot"}, "prompts"),
        ({"max_length": 0}, "max_length"),
        ({"batch_tokens": -1}, "batch_tokens"),
        ({"padding_side": "up"}, "padding_side"),
        ({"dtype": "int4"}, "dtype"),
    ):
        with pytest.raises(ConfigError, match=name):
            KVEmbedConfig(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.method = "mean"  # type: ignore[misc]


def test_round_trip_replace_and_fingerprint() -> None:
    config = KVEmbedConfig(method="kv", layers=(4, 5), bias=2.0, prompts={"query": "Q {text}"}, max_length=512)
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON
    assert KVEmbedConfig.from_dict(data) == config
    with pytest.raises(ConfigError, match="unknown options"):
        KVEmbedConfig.from_dict({**data, "temperature": 1})
    with pytest.raises(ConfigError, match="unknown options"):
        config.replace(colour="red")
    assert config.replace(bias=3.0) == dataclasses.replace(config, bias=3.0)
    # what determines the vectors changes the fingerprint; how encoding runs does not
    assert config.replace(bias=3.0).fingerprint != config.fingerprint
    assert config.replace(batch_tokens=99, show_progress=True, device="cpu").fingerprint == config.fingerprint
    assert set(field_names()) == set(field_names(LOAD)) | set(field_names(VECTORS)) | set(field_names(RUNTIME))


def test_cli_flags_adapters_and_mteb_are_derived_from_the_config() -> None:
    """One test ties every surface to the config's fields: a new option that one of them misses fails here."""
    from langchain_kvembed import KVEmbeddings
    from llama_index.embeddings.kvembed import KVEmbedding

    # CLI: every option but the progress bar (-q) is a flag, with the config's help text
    assert set(_FLAG_TYPES) == set(field_names()) - {"show_progress", "model_kwargs"}  # -q; a dict from Python
    args = build_parser().parse_args(["info", "--layers", "3,4", "--bias", "2", "--prompts", '{"query": "Q {text}"}'])
    config = config_from_args(args)
    assert config.layers == (3, 4) and config.bias == 2.0 and config.prompts.query == "Q {text}"
    assert config_from_args(build_parser().parse_args(["info", "-q"])) == KVEmbedConfig()  # unset = default
    info_help = build_parser()._subparsers._group_actions[0].choices["info"].format_help()  # type: ignore[union-attr]
    for name in _FLAG_TYPES:
        assert "--" + name.replace("_", "-") in info_help
    # adapters: the same options, with the config's defaults
    for adapter, model_field in ((KVEmbeddings, "model"), (KVEmbedding, "model_name")):
        fields = adapter.model_fields
        assert set(ADAPTER_OPTIONS) <= set(fields), adapter
        assert fields[model_field].default == option_default("model")
        for name in ADAPTER_OPTIONS:
            assert fields[name].default == option_default(name), (adapter, name)
    assert set(ADAPTER_OPTIONS) == set(field_names()) - {"model"}  # every option, the model under its own name


def test_mteb_loader_kwargs_are_the_vector_options(make_embedder) -> None:
    embedder = make_embedder("llama", method="prompteol")
    meta = MTEBEncoder(embedder=embedder).meta_fields()
    assert set(meta["loader_kwargs"]) == set(field_names(VECTORS))
    config = KVEmbedConfig(model=embedder.source.spec, **meta["loader_kwargs"])
    assert KVEmbedder.from_pretrained(config).fingerprint == embedder.fingerprint


def test_resolution_happens_before_construction_and_is_recorded(make_embedder) -> None:
    base = make_embedder("llama", method="kv", layers="id")
    assert base.config.is_resolved and isinstance(base.config.layers, tuple)
    assert base.describe()["provenance"] == {
        "layers": "intrinsic-dimension",
        "bias": "default",
        "pooling": "method",
        "postprocess": "none",
    }
    assert base.layer_selection is not None and base.layers == base.layer_selection.layers
    # a resolved config builds the same embedder over the loaded model without any calibration pass
    again = KVEmbedder(base.model, base.tokenizer, base.config, source=base.source)
    assert again.layer_selection is None and again.fingerprint == base.fingerprint
    texts = ["a short text", "another, somewhat longer text about retrieval"]
    np.testing.assert_array_equal(again.encode(texts), base.encode(texts))
    # the recorded config rebuilds the embedder through from_pretrained too
    rebuilt = KVEmbedder.from_pretrained(KVEmbedConfig.from_dict(base.describe()["config"]))
    assert rebuilt.fingerprint == base.fingerprint
    np.testing.assert_allclose(rebuilt.encode(texts), base.encode(texts), atol=1e-6)
    variant = base.variant(bias=3.0)
    assert variant.config == base.config.replace(bias=3.0)
    with pytest.raises(TypeError, match="cannot change"):
        base.variant(device="cpu")
    with pytest.raises(ConfigError, match="out of range"):
        base.variant(layers=[99])


def test_an_index_stores_the_config_and_search_restores_it_exactly(make_embedder, tmp_path) -> None:
    embedder = make_embedder("qwen3", method="kv", layers=[1, 2], bias=2.5, pooling="last", max_length=256)
    documents = [SourceDocument(f"d{i}", f"document number {i} about topic {i % 3}", f"t{i}", "test") for i in range(4)]
    build_index(embedder, documents, tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    stored = stored_config(manifest["embedder"])
    assert stored == embedder.config.portable()
    index, restored = load_for_search(tmp_path / "index")
    assert restored.config.portable() == embedder.config.portable() and restored.fingerprint == embedder.fingerprint
    assert isinstance(index, VectorIndex) and len(index) == 4


def test_an_index_without_a_config_record_has_none() -> None:
    assert stored_config({}) is None


def test_an_index_built_in_float32_is_searched_in_bfloat16_and_says_so(make_embedder, tmp_path, caplog) -> None:
    embedder = make_embedder("llama", layers=[1, 2], dtype="float32")
    documents = [SourceDocument(f"d{i}", f"document number {i} about topic {i % 3}", f"t{i}", "test") for i in range(4)]
    build_index(embedder, documents, tmp_path / "index")
    with caplog.at_level("WARNING", logger="kvembed_rag.retrieval.pipeline"):
        index, rounded = load_for_search(tmp_path / "index", dtype="bfloat16")
    assert rounded.describe()["dtype"] == "bfloat16" and rounded.fingerprint != embedder.fingerprint
    assert "built in float32 and is searched in bfloat16" in caplog.text
    hits = index.search(rounded.encode_queries("document number 2 about topic 2"), k=3)[0]
    assert len(hits) == 3 and all(np.isfinite(h.score) for h in hits)  # the provenance check lets it through
    text = next(r.text for r in index.get(index.ids) if r.metadata["document"] == "d2")
    cosine = float(rounded.encode_documents([text])[0] @ embedder.encode_documents([text])[0])
    assert cosine > 0.99  # the same text's vector in the two dtypes: comparable, not identical
    caplog.clear()
    with caplog.at_level("WARNING", logger="kvembed_rag.retrieval.pipeline"):
        load_for_search(tmp_path / "index")  # the recorded dtype: silent
    assert "searched in" not in caplog.text
