"""Bad input, concurrency, injected faults and untrusted files, across every public entry point."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvembed_rag import EmbeddingMemoryError, KVEmbedder, TruncationWarning, VectorIndex
from kvembed_rag.cli import main

STRANGE = {
    "empty": "",
    "whitespace": " \t\n ",
    "control": "\x00\x01\x02\x1b[31m\x7f bell\x07",
    "lone surrogate": "broken \ud800 pair \udfff",
    "emoji and scripts": "🚀🔥👩‍👩‍👧 mixed Ελληνικά 日本語 العربية हिन्दी",
}


@pytest.fixture(scope="module")
def embedder(checkpoints) -> KVEmbedder:
    return KVEmbedder.from_pretrained(str(checkpoints["gemma3"]), max_length=256)


# ---------------------------------------------------------------- bad input: KVEmbedder


@pytest.mark.parametrize("name", list(STRANGE))
def test_strange_strings_give_finite_unit_vectors(embedder, name):
    vector = embedder.encode(STRANGE[name])
    assert np.isfinite(vector).all() and abs(float(np.linalg.norm(vector)) - 1) < 1e-5


@pytest.mark.parametrize(("value", "position"), [(None, 1), (b"bytes", 1), (3.5, 1), (["list"], 1)])
def test_non_strings_name_their_position(embedder, value, position):
    with pytest.raises(TypeError, match=rf"texts\[{position}\]"):
        embedder.encode(["fine", value, "fine"])
    with pytest.raises(TypeError, match="texts must be"):
        embedder.encode(value if not isinstance(value, list) else 42)


def test_million_character_string(embedder):
    text = "lorem ipsum dolor sit amet " * 37_038  # 1,000,026 characters
    start = time.perf_counter()
    with pytest.warns(TruncationWarning, match=r"1 of 1 inputs"):
        vector = embedder.encode(text)
    assert time.perf_counter() - start < 120
    assert np.isfinite(vector).all()
    assert len(embedder.tokenize([text])[0].ids) <= 256


def test_hundred_thousand_short_strings(checkpoints):
    # the bare-text method keeps this test fast (6 tokens a text instead of 25); the list handling is the same
    embedder = KVEmbedder.from_pretrained(str(checkpoints["llama"]), method="last", max_length=64)
    texts = [f"item {i}" for i in range(100_000)]
    vectors = embedder.encode(texts)
    assert vectors.shape == (100_000, embedder.dim) and np.isfinite(vectors).all()
    np.testing.assert_allclose(
        vectors[[0, 54_321, 99_999]], embedder.encode([texts[0], texts[54_321], texts[99_999]]), atol=1e-4
    )


# ---------------------------------------------------------------- property-based

texts_strategy = st.lists(st.text(alphabet=st.characters(codec=None), max_size=60), min_size=1, max_size=6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=texts_strategy)
def test_vectors_finite_unit_deterministic_and_batch_independent(embedder, texts):
    batched = embedder.encode(texts)
    assert np.isfinite(batched).all()
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(batched, embedder.encode(texts))  # deterministic
    alone = np.stack([embedder.encode([t])[0] for t in texts])
    assert np.abs(batched - alone).max() <= 1e-4


operations = st.lists(
    st.tuples(
        st.sampled_from(["upsert", "delete"]),
        st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=4, unique=True),
        st.integers(0, 1000),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(ops=operations, factory=st.sampled_from(["Flat", "HNSW32"]))
def test_index_matches_a_dict_model(ops, factory):
    index = VectorIndex(4, factory=factory)
    model: dict[str, str] = {}
    for kind, ids, seed in ops:
        if kind == "upsert":
            vectors = np.random.default_rng(seed).normal(size=(len(ids), 4)) + 0.1
            texts = [f"{i}-{seed}" for i in ids]
            index.upsert(ids, vectors, texts)
            model.update(zip(ids, texts, strict=True))
        else:
            index.delete([*ids, "never-added"])
            for item in ids:
                model.pop(item, None)
    assert sorted(index.ids) == sorted(model)
    assert {r.id: r.text for r in index.get(list(model))} == model
    hits = index.search(np.ones(4), k=10)[0]
    assert {h.id for h in hits} == set(model) and all(np.isfinite(h.score) for h in hits)


# ---------------------------------------------------------------- adapters and index, bad input


def test_adapters_reject_non_strings_with_position(checkpoints):
    from langchain_kvembed import KVEmbeddings
    from llama_index.embeddings.kvembed import KVEmbedding

    lc = KVEmbeddings(model=str(checkpoints["gemma3"]), max_length=256)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        lc.embed_documents(["ok", None])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        lc.embed_query(None)  # type: ignore[arg-type]
    assert np.isfinite(lc.embed_documents(list(STRANGE.values()))).all()
    li = KVEmbedding(model_name=str(checkpoints["gemma3"]), max_length=256)
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        li.get_text_embedding_batch([b"bytes"])  # type: ignore[list-item]
    assert np.isfinite(li.get_text_embedding_batch(list(STRANGE.values()))).all()


def test_index_duplicate_and_unknown_ids():
    index = VectorIndex(3)
    with pytest.raises(ValueError, match=r"ids\[2\] repeats ids\[0\]"):
        index.upsert(["a", "b", "a"], np.eye(3))
    assert len(index) == 0
    index.upsert(["a"], np.ones((1, 3)))
    assert index.delete(["zzz", "yyy"]) == 0 and index.get(["zzz"]) == []
    with pytest.raises(TypeError, match=r"ids\[0\]"):
        index.upsert([None], np.ones((1, 3)))  # type: ignore[list-item]


def test_cli_names_files_with_bad_bytes(checkpoints, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    assert main(["embed", "--model", str(checkpoints["gemma3"]), "--input", str(bad), "-q"]) == 2
    assert "latin1.txt: not UTF-8" in capsys.readouterr().err
    strange = tmp_path / "strange.txt"
    strange.write_text("\n".join(v for v in STRANGE.values() if v.strip()).replace("\ud800", "").replace("\udfff", ""))
    assert main(["embed", "--model", str(checkpoints["gemma3"]), "--input", str(strange), "--json", "-q"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["vectors"]).all()


# ---------------------------------------------------------------- concurrency

CONCURRENT_TEXTS = [f"concurrent text {i} " + "word " * (i % 9) for i in range(16)]


def test_sixteen_threads_share_one_embedder(embedder):
    expected = embedder.encode(CONCURRENT_TEXTS)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for _ in range(3):
                results[worker] = embedder.encode(CONCURRENT_TEXTS[worker:] + CONCURRENT_TEXTS[:worker])
                embedder.tokenize(CONCURRENT_TEXTS)  # tokenizer use from many threads ("Already borrowed")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert not errors, errors
    for worker, vectors in results.items():
        assert np.abs(vectors - np.roll(expected, -worker, axis=0)).max() <= 1e-5


async def test_sixty_four_concurrent_async_calls_in_both_adapters(checkpoints):
    from langchain_kvembed import KVEmbeddings
    from llama_index.embeddings.kvembed import KVEmbedding

    lc = KVEmbeddings(model=str(checkpoints["gemma3"]), max_length=256)
    li = KVEmbedding(model_name=str(checkpoints["gemma3"]), max_length=256)
    expected = np.asarray(lc.embed_documents(CONCURRENT_TEXTS))
    calls = [lc.aembed_documents(CONCURRENT_TEXTS) for _ in range(32)]
    calls += [li.aget_text_embedding_batch(CONCURRENT_TEXTS) for _ in range(32)]
    results = await asyncio.wait_for(asyncio.gather(*calls), timeout=300)
    assert len(results) == 64
    for result in results:
        assert np.abs(np.asarray(result) - expected).max() <= 1e-5


# ---------------------------------------------------------------- faults


def test_out_of_memory_batches_are_split_until_they_fit(embedder, monkeypatch, caplog):
    texts = [f"text {i}" for i in range(10)]
    expected = embedder.encode(texts)
    real = embedder.forward.embed_encoded  # the forward pass the encode loop calls
    sizes: list[int] = []

    def picky(batch):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(batch)

    monkeypatch.setattr(embedder.forward, "embed_encoded", picky)
    result = embedder.encode(texts)
    assert np.abs(result - expected).max() <= 1e-5
    assert sizes[0] == 10 and max(sizes[1:]) <= 5 and "retrying it in halves" in caplog.text


def test_a_text_too_big_alone_is_named(embedder, monkeypatch):
    long_text = "long " * 100
    real = embedder.forward.embed_encoded  # the forward pass the encode loop calls

    def refuse_long(batch):
        if any(len(item.ids) > 50 for item in batch):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 GB")
        return real(batch)

    monkeypatch.setattr(embedder.forward, "embed_encoded", refuse_long)
    # the long text is also over this embedder's window: its truncation warning is expected here
    with pytest.warns(TruncationWarning), pytest.raises(EmbeddingMemoryError, match=r"texts\[2\] \(\d+ tokens\)"):
        embedder.encode(["a", "b", long_text, "c"])


def test_other_runtime_errors_are_not_swallowed(embedder, monkeypatch):
    def broken(batch):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(embedder.forward, "embed_encoded", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        embedder.encode(["a", "b"])


SAVER = textwrap.dedent(
    """
    import sys, numpy as np
    from kvembed_rag import VectorIndex
    folder = sys.argv[1]
    index = VectorIndex.load(folder)
    rng = np.random.default_rng(0)
    n = 0
    while True:  # keep rewriting: the parent kills us at a random moment
        n += 1
        index.upsert([f"extra{n}"], rng.normal(size=(1, 16)))
        index.save(folder)
        print(n, flush=True)
    """
)


def test_killed_mid_save_leaves_a_loadable_index(tmp_path):
    folder = tmp_path / "idx"
    index = VectorIndex(16)
    index.upsert([f"d{i}" for i in range(2000)], np.random.default_rng(1).normal(size=(2000, 16)))
    index.save(folder)
    for delay in (0.8, 1.3, 1.9):
        child = subprocess.Popen([sys.executable, "-c", SAVER, str(folder)], stdout=subprocess.PIPE, text=True)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        loaded = VectorIndex.load(folder)  # never half-written: the old or the new generation
        assert len(loaded) >= 2000 and all(f"d{i}" in loaded for i in range(0, 2000, 199))


# ---------------------------------------------------------------- untrusted files


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_pickles_in_a_model_folder_and_caches_are_never_run(checkpoints, tmp_path, monkeypatch):
    import shutil

    marker = tmp_path / "pwned"
    model = tmp_path / "model"
    shutil.copytree(checkpoints["llama"], model)
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Exploit(marker)))
    cache = tmp_path / "cache"
    (cache / "layers").mkdir(parents=True)
    (cache / "layers" / "evil.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    monkeypatch.setenv("KVEMBED_CACHE", str(cache))
    embedder = KVEmbedder.from_pretrained(str(model))  # safetensors win; the layer cache is JSON only
    assert np.isfinite(embedder.encode("x")).all()
    assert not marker.exists()


def test_trust_remote_code_is_off_unless_asked(checkpoints, monkeypatch):
    import transformers

    seen: list[bool] = []
    real_model, real_tok = transformers.AutoModel.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def spy_model(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real_model(*args, **kwargs)

    def spy_tok(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real_tok(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy_tok)
    KVEmbedder.from_pretrained(str(checkpoints["llama"]), method="mean")
    assert seen == [False, False]
    KVEmbedder.from_pretrained(str(checkpoints["llama"]), method="mean", trust_remote_code=True)
    assert seen[-2:] == [True, True]


def test_no_pickle_in_the_package():
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in list((root / "kvembed_rag").rglob("*.py")) + list((root / "integrations").rglob("*.py")):
        source = path.read_text()
        if "import pickle" in source or "torch.load(" in source or "joblib" in source:
            offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_warnings_do_not_leak_between_calls(embedder):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)
        embedder.encode(["short text"])
