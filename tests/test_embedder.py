"""The public KVEmbedder API: shapes, roles, description, bad input, truncation, threads, errors."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
from dtype_tolerances import DTYPES, VECTOR_TOLERANCE, dtype_option

from kvembed_rag import KVEmbedder, TruncationWarning, UnsupportedAttentionError, UnsupportedModelError
from kvembed_rag.attention import resolve_backend
from kvembed_rag.layer_selection import default_window, validate_layers


def test_shapes_dtype_and_norm(make_embedder):
    embedder = make_embedder()
    one = embedder.encode("a single text")
    many = embedder.encode_documents(["one", "two", "three"])
    assert one.shape == (embedder.dim,) and one.dtype == np.float32
    assert many.shape == (3, embedder.dim) and many.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.encode(("one", "two", "three")), many, atol=1e-6)  # any sequence


def test_empty_list_gives_empty_matrix(make_embedder):
    embedder = make_embedder()
    out = embedder.encode([])
    assert out.shape == (0, embedder.dim) and out.dtype == np.float32


@pytest.mark.parametrize("bad", [None, 3, b"bytes", 1.5, ["ok", None]])
def test_non_strings_raise_type_error_naming_position(make_embedder, bad):
    embedder = make_embedder()
    with pytest.raises(TypeError) as info:
        embedder.encode(["fine", "also fine", bad] if not isinstance(bad, list) else bad)
    assert "texts[" in str(info.value) or "texts must be" in str(info.value)
    if not isinstance(bad, list):
        assert "texts[2]" in str(info.value)


def test_top_level_non_string_is_rejected(make_embedder):
    with pytest.raises(TypeError, match="texts must be"):
        make_embedder().encode(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["kv", "last", "mean", "echo", "token-prepending", "htp"])
@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_and_whitespace_strings_give_finite_unit_vectors(make_embedder, method, text):
    embedder = make_embedder(method=method)
    vector = embedder.encode(text)
    assert np.isfinite(vector).all()
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    # documented behaviour: the prompt with an empty slot, the same whether alone or batched
    np.testing.assert_allclose(embedder.encode([text, "something longer than that"])[0], vector, atol=1e-5)


def test_strange_text_stays_finite(make_embedder):
    embedder = make_embedder()
    texts = ["\x00\x01\x7f control", "emoji 🚀🔥 and 混合 scripts Ελληνικά", "\ud800 lone surrogate", "a" * 5000]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        out = embedder.encode(texts)
    assert np.isfinite(out).all()


def test_roles_use_their_own_prompts(make_embedder):
    embedder = make_embedder(method="kv")
    doc = embedder.encode_documents("the same words")
    query = embedder.encode_queries("the same words")
    assert not np.allclose(doc, query)
    np.testing.assert_allclose(embedder.encode("the same words", role="query"), query, atol=1e-6)
    with pytest.raises(ValueError, match="role"):
        embedder.encode("x", role="passage")  # type: ignore[arg-type]


def test_methods_differ(make_embedder):
    texts = ["one text", "another text entirely"]
    vectors = {m: make_embedder(method=m).encode(texts) for m in ("kv", "prompteol", "mean", "echo")}
    for a in vectors:
        for b in vectors:
            if a < b:
                assert not np.allclose(vectors[a], vectors[b], atol=1e-4), (a, b)


def test_truncation_warns_with_counts_and_keeps_the_prompt(make_embedder):
    embedder = make_embedder(method="kv", max_length=40)
    long_text = "The quick brown fox jumps over the lazy dog. " * 20
    with pytest.warns(TruncationWarning, match=r"1 of 2 inputs were longer than max_length=40 tokens"):
        embedder.encode([long_text, "short"])
    encoded = embedder.tokenize([long_text])[0]
    assert len(encoded.ids) <= 40 and encoded.truncated_by > 0
    suffix = embedder.tokenizer(" Compress the Context in one word:", add_special_tokens=False)["input_ids"]
    assert encoded.ids[-len(suffix) + 1 :] == suffix[-len(suffix) + 1 :]  # the instruction survives


def test_echo_truncation_cuts_both_copies(make_embedder):
    embedder = make_embedder(method="echo", max_length=60)
    with pytest.warns(TruncationWarning):
        embedder.encode(["word " * 200])
    encoded = embedder.tokenize(["word " * 200])[0]
    assert len(encoded.ids) <= 60
    assert 0 < encoded.pool_start < encoded.pool_end <= len(encoded.ids)


def test_no_warning_when_everything_fits(make_embedder):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)
        make_embedder().encode(["short", "texts"])


def test_prompt_longer_than_max_length_is_a_clear_error(make_embedder):
    with pytest.raises(ValueError, match="prompt alone"):  # at construction, not in the middle of a corpus
        make_embedder(method="kv", max_length=4)


def test_describe_records_what_determines_vectors(make_embedder):
    embedder = make_embedder(method="kv", layers=[1, 2], bias=0.5)
    info = embedder.describe()
    for key in ("model", "version", "method", "layers", "bias", "pooling", "prompts", "max_length", "dim"):
        assert key in info
    assert info["layers"] == [1, 2] and info["bias"] == 0.5 and info["method"] == "kv"
    assert info["model"]["kind"] == "directory" and len(info["model"]["identity"]) == 64
    assert info["prompts"]["document"].startswith("Context:")
    assert embedder.to_dict() == info
    assert make_embedder(method="kv", layers=[1, 3], bias=0.5).fingerprint != embedder.fingerprint


def test_custom_prompts(make_embedder):
    embedder = make_embedder(method="kv", prompts={"query": "Question: {text} In one word:"})
    assert embedder.prompts.query == "Question: {text} In one word:"
    assert embedder.prompts.document.startswith("Context:")
    with pytest.raises(ValueError, match=r"\{text\}"):
        make_embedder(method="kv", prompts="no placeholder")


def test_default_layer_window():
    assert default_window(18) == [4, 5]  # Gemma-3-270M: first layer past 20% of 18 is 4; floor(1.8) + 1 = 2
    assert default_window(32) == [7, 8, 9, 10]  # 20% of 32 = 6.4 -> 7; floor(3.2) + 1 = 4 layers
    assert default_window(6) == [2]
    assert default_window(1) == [0]


def test_explicit_layers_are_validated():
    assert validate_layers([3, 1, -1], 6) == [1, 3, 5]
    with pytest.raises(ValueError, match="out of range"):
        validate_layers([6], 6)
    with pytest.raises(TypeError):
        validate_layers(["2"], 6)


def test_bad_arguments_are_clear_errors(checkpoints):
    path = str(checkpoints["llama"])
    with pytest.raises(ValueError, match="unknown method"):
        KVEmbedder.from_pretrained(path, method="nope")
    with pytest.raises(ValueError, match="out of range"):
        KVEmbedder.from_pretrained(path, layers=[99])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        KVEmbedder.from_pretrained(path, max_length=10**6)
    with pytest.raises(ValueError, match="pooling"):
        KVEmbedder.from_pretrained(path, pooling="max")


@pytest.mark.parametrize("name", ["flash_attention_2", "flash_attention_3", "flex_attention", "paged|sdpa"])
def test_flash_and_flex_kernels_are_refused(name):
    with pytest.raises(UnsupportedAttentionError, match="sdpa"):
        resolve_backend(name)
    assert resolve_backend("sdpa") == "kvembed" and resolve_backend("eager") == "kvembed_eager"


def test_model_without_registry_dispatch_is_refused(tmp_path):
    from tiny_models import build_tokenizer
    from transformers import BloomConfig, BloomModel

    tokenizer = build_tokenizer()
    BloomModel(BloomConfig(vocab_size=len(tokenizer), hidden_size=32, n_layer=2, n_head=2)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="BloomModel"):
        KVEmbedder.from_pretrained(str(tmp_path))


def test_missing_model_is_a_clear_error(tmp_path):
    from kvembed_rag import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"\.gguf"):
        KVEmbedder.from_pretrained(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        KVEmbedder.from_pretrained(str(tmp_path / "empty"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_eight_threads_match_one_thread(make_embedder, dtype):
    embedder = make_embedder(arch="gemma3", **dtype_option(dtype))
    texts = [f"text number {i} " + "word " * (i % 7) for i in range(24)]
    expected = embedder.encode(texts)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for _ in range(3):
                results[worker] = embedder.encode(texts[worker:] + texts[:worker])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(results) == 8
    for worker, vectors in results.items():
        rolled = np.concatenate([expected[worker:], expected[:worker]])
        # rolled input reorders the batches, so bf16 shows its batch noise here too (tests/dtype_tolerances.py)
        assert np.abs(vectors - rolled).max() <= (1e-5 if dtype == "float32" else VECTOR_TOLERANCE[dtype])


def test_progress_bar_is_optional(make_embedder, capsys):
    embedder = make_embedder()
    embedder.encode(["a", "b"], show_progress=True)
    assert "embedding" in capsys.readouterr().err
