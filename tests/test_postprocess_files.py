"""Post-processing statistics as files: ``postprocess=PATH``, ``save_postprocess``, ``kvembed-rag postprocess
fit/show``, and ``kvembed-rag index --fit-postprocess`` (statistics fitted on the corpus, stored in the index)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from kvembed_rag import KVEmbedConfig, KVEmbedder
from kvembed_rag import postprocess as pp
from kvembed_rag.cli import main
from kvembed_rag.errors import ConfigError, EmbedderMismatchError, IndexCorruptError, PostprocessMismatchError
from kvembed_rag.forward import Forward
from kvembed_rag.layer_selection import load_calibration
from kvembed_rag.retrieval.pipeline import load_for_search
from kvembed_rag.retrieval.vector_index import MANIFEST, VectorIndex

CORPUS = [f"corpus document {i} about topic {i % 4}: {'words ' * (i % 5)}" for i in range(12)]
TEXTS = ["a short text", "another, somewhat longer text about retrieval", "numbers 1 2 3"]


# ------------------------------------------------------------------ postprocess=PATH and save_postprocess
def test_a_statistics_file_round_trips_through_the_config(make_embedder, tmp_path, monkeypatch) -> None:
    raw = make_embedder("llama", method="kv", max_length=128)
    corpus = raw.fit_postprocess(CORPUS, "whiten:0.5@8")
    written = corpus.save_postprocess(tmp_path / "stats.safetensors")
    assert pp.read_header(written)["key"] == raw.postprocess_key == corpus.postprocess_key
    monkeypatch.chdir(tmp_path)  # a relative path, as a user types it
    config = raw.config.replace(postprocess="stats.safetensors")
    assert config.postprocess == "stats.safetensors"  # the config keeps what was given, reads nothing
    loaded = KVEmbedder(raw.model, raw.tokenizer, config, source=raw.source)
    assert loaded.provenance["postprocess"] == "file"
    assert loaded.config.postprocess == str(written.resolve())  # resolved at build time: absolute
    assert loaded.fingerprint == corpus.fingerprint and loaded.dim == 8
    assert loaded.describe()["postprocess"] == corpus.describe()["postprocess"]
    np.testing.assert_allclose(loaded.encode(TEXTS), corpus.encode(TEXTS), atol=1e-6)
    # the resolved config is plain JSON and rebuilds the same embedder from anywhere
    record = json.loads(json.dumps(loaded.describe()["config"]))
    monkeypatch.chdir(tmp_path.parent)
    again = KVEmbedder(raw.model, raw.tokenizer, KVEmbedConfig.from_dict(record), source=raw.source)
    assert again.fingerprint == corpus.fingerprint
    assert KVEmbedConfig(postprocess=Path("x/Stats.SafeTensors")).postprocess == "x/Stats.SafeTensors"


def test_changing_the_post_processing_changes_describe_and_the_fingerprint(make_embedder, tmp_path) -> None:
    raw = make_embedder("llama", method="kv", max_length=128)
    centred = raw.variant(postprocess="center")  # the calibration texts' mean
    corpus = raw.fit_postprocess(CORPUS, "center")  # this corpus' mean
    path = corpus.save_postprocess(tmp_path / "corpus.safetensors")
    from_file = raw.variant(postprocess=str(path))
    fingerprints = {raw.fingerprint, centred.fingerprint, corpus.fingerprint}
    assert len(fingerprints) == 3 and from_file.fingerprint == corpus.fingerprint
    descriptions = [e.describe()["postprocess"] for e in (raw, centred, from_file)]
    assert descriptions[0] is None and descriptions[1]["fingerprint"] != descriptions[2]["fingerprint"]
    assert descriptions[2]["n"] == len(CORPUS)


def test_save_postprocess_needs_statistics_and_a_safetensors_name(make_embedder, tmp_path) -> None:
    raw = make_embedder("llama", method="kv", max_length=128)
    with pytest.raises(ValueError, match="no post-processing statistics"):
        raw.save_postprocess(tmp_path / "none.safetensors")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        raw.fit_postprocess(CORPUS).save_postprocess(tmp_path / "stats.json")


def test_a_missing_file_is_a_clear_error(make_embedder, tmp_path) -> None:
    raw = make_embedder("llama", method="kv", max_length=128)
    with pytest.raises(ConfigError, match=r"no such statistics file.*postprocess fit"):
        raw.variant(postprocess=str(tmp_path / "nowhere.safetensors"))


def test_a_planted_file_of_another_configuration_is_refused(make_embedder, tmp_path) -> None:
    other = make_embedder("llama", method="kv", max_length=128, bias=2.0)
    planted = other.fit_postprocess(CORPUS).save_postprocess(tmp_path / "other.safetensors")
    mine = make_embedder("llama", method="kv", max_length=128)
    with pytest.raises(PostprocessMismatchError, match=r"differs in \['bias'\].*file=2\.0 vs this=1\.0") as caught:
        mine.variant(postprocess=str(planted))
    assert "postprocess show" in str(caught.value) and "postprocess fit" in str(caught.value)
    assert isinstance(caught.value, EmbedderMismatchError)
    # another method, another model: the same refusal
    with pytest.raises(PostprocessMismatchError, match="method"):
        make_embedder("llama", method="prompteol", max_length=128).variant(postprocess=str(planted))
    with pytest.raises(PostprocessMismatchError, match="model"):
        make_embedder("qwen3", method="kv", max_length=128, bias=2.0).variant(postprocess=str(planted))


def test_a_damaged_file_is_refused(make_embedder, tmp_path) -> None:
    raw = make_embedder("llama", method="kv", max_length=128)
    path = raw.fit_postprocess(CORPUS).save_postprocess(tmp_path / "stats.safetensors")
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"  # the last float of the mean changed: the fingerprint no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(PostprocessMismatchError, match="fingerprint"):
        raw.variant(postprocess=str(path))
    path.write_bytes(path.read_bytes()[:20])  # truncated
    with pytest.raises(PostprocessMismatchError, match="not a readable"):
        raw.variant(postprocess=str(path))


# ------------------------------------------------------------------ kvembed-rag postprocess fit / show
@pytest.fixture
def corpus_folder(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, text in enumerate(CORPUS):
        (folder / f"doc{i:02d}.txt").write_text(text)
    (folder / "notes.jsonl").write_text(json.dumps({"key": "n1", "body": "zip archives compress folders"}) + "\n")
    return folder


def test_cli_fit_then_show(checkpoints, corpus_folder, tmp_path, capsys) -> None:
    model, out = str(checkpoints["llama"]), tmp_path / "my-stats.safetensors"
    inputs = [str(corpus_folder), str(corpus_folder / "notes.jsonl")]  # a folder's .jsonl is given by name
    argv = ["postprocess", "fit", *inputs, "--spec", "center@4", "--out", str(out)]
    assert main([*argv, "--model", model, "--max-length", "128", "--id-field", "key", "--text-field", "body"]) == 0
    assert "fingerprint" in capsys.readouterr().out
    assert main(["postprocess", "show", str(out), "--json"]) == 0
    header = json.loads(capsys.readouterr().out)
    assert header["spec"]["kind"] == "center" and header["spec"]["dim"] == 4
    assert header["n"] == len(CORPUS) + 1 and header["in_dim"] == 64 and header["out_dim"] == 4
    assert header["key"]["method"] == "kv" and header["fingerprint"] == pp.read_header(out)["fingerprint"]
    assert main(["postprocess", "show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "center@4" in text and header["fingerprint"] in text and "pooling" in text
    # the file works as postprocess= for the same options
    embedder = KVEmbedder.from_pretrained(model, max_length=128, postprocess=str(out))
    assert embedder.dim == 4 and embedder.describe()["postprocess"]["fingerprint"] == header["fingerprint"]


def test_cli_fit_and_show_refuse_bad_usage(checkpoints, corpus_folder, tmp_path, capsys) -> None:
    model = str(checkpoints["llama"])
    base = ["postprocess", "fit", str(corpus_folder), "--model", model]
    assert main([*base, "--spec", "auto", "--out", str(tmp_path / "s.safetensors")]) == 2
    assert main([*base, "--spec", "sharpen", "--out", str(tmp_path / "s.safetensors")]) == 2
    assert main([*base, "--spec", "center", "--out", str(tmp_path / "s.json")]) == 2
    out = str(tmp_path / "s.safetensors")
    assert main([*base, "--spec", "center", "--out", out, "--postprocess", "center"]) == 2
    not_stats = tmp_path / "fake.safetensors"
    not_stats.write_bytes(b"not a safetensors file at all")
    assert main(["postprocess", "show", str(not_stats)]) == 1
    assert main(["postprocess", "show", str(tmp_path / "missing.safetensors")]) == 2
    assert "kvembed-rag postprocess" in capsys.readouterr().err


# ------------------------------------------------------------------ kvembed-rag index --fit-postprocess
def _index(model: str, folder: Path, out: Path, *extra: str) -> int:
    return main(["index", str(folder), "--out", str(out), "--model", model, "--max-length", "128", "-q", *extra])


def test_index_fit_postprocess_then_search_uses_the_same_statistics(
    checkpoints, corpus_folder, tmp_path, capsys
) -> None:
    model, out = str(checkpoints["llama"]), tmp_path / "idx"
    assert _index(model, corpus_folder, out, "--fit-postprocess", "center", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    stats = report["embedder"]["postprocess"]
    assert report["embedder"]["provenance"]["postprocess"] == "file" and stats["n"] == report["chunks"]
    manifest = json.loads((out / MANIFEST).read_text())
    entry = manifest["attachments"]["postprocess"]  # carried by the index as an opaque, checksummed attachment
    assert (out / entry["file"]).is_file() and re.fullmatch(r"postprocess-[0-9a-f]{16}\.safetensors", entry["file"])
    assert list(out.glob("postprocess-*")) == [out / entry["file"]]  # written once, under its attachment name
    assert manifest["embedder"]["postprocess"]["fingerprint"] == stats["fingerprint"]
    # search rebuilds the embedder with the index's statistics: the queries get the corpus' post-processing
    index, embedder = load_for_search(out)
    assert embedder.describe()["postprocess"]["fingerprint"] == stats["fingerprint"]
    assert embedder.provenance["postprocess"] == "file"
    # a corpus fit centres queries on the calibration texts embedded as queries, not on the corpus's documents
    assert stats["query_mean"] and embedder.postprocess_stats.query_mean is not None
    raw_query = embedder.raw().encode_queries(["topic 1"])
    np.testing.assert_allclose(embedder.encode_queries(["topic 1"]), embedder.apply_postprocess(raw_query, "query"))
    assert not np.allclose(embedder.apply_postprocess(raw_query, "query"), embedder.apply_postprocess(raw_query))
    hits = index.search(embedder.encode_queries("topic 1"), k=3)[0]
    assert len(hits) == 3
    assert main(["search", str(out), "corpus document about topic 1", "-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["hits"]) == 2
    # an index moved elsewhere still finds its statistics (the recorded path is where it was built)
    moved = tmp_path / "moved"
    shutil.move(str(out), moved)
    _, relocated = load_for_search(moved)
    assert relocated.fingerprint == embedder.fingerprint and Path(relocated.config.postprocess).parent == moved


def test_index_fit_postprocess_embeds_each_chunk_once(
    checkpoints, corpus_folder, tmp_path, capsys, monkeypatch
) -> None:
    model, out = str(checkpoints["llama"]), tmp_path / "idx"
    monkeypatch.setenv("KVEMBED_CACHE", str(tmp_path / "cache"))  # the calibration query mean is computed here
    forwarded: list[int] = []
    embed_encoded = Forward.embed_encoded  # every forward pass of every embedder goes through it

    def counting(self: Forward, items: list) -> np.ndarray:
        forwarded.append(len(items))
        return embed_encoded(self, items)

    monkeypatch.setattr(Forward, "embed_encoded", counting)
    assert _index(model, corpus_folder, out, "--fit-postprocess", "whiten:0.5@8", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    # the fit's raw vectors are post-processed for the index: one forward pass per chunk, not two (plus the
    # calibration texts as queries, once per configuration: their mean centres the queries; cached after)
    calibration = len(load_calibration())
    assert (
        sum(forwarded) == report["chunks"] + calibration
        and report["reused"] == report["chunks"] == report["embedder"]["postprocess"]["n"]
    )
    index, embedder = load_for_search(out)
    records = index.get(index.ids)
    again = embedder.encode_documents([r.text for r in records])  # what a fresh post-processed encode gives
    np.testing.assert_allclose(index.vectors([r.id for r in records]), again, atol=1e-5)
    # with --fit-limit only the sampled chunks are reused; the rest are embedded with the fitted statistics
    forwarded.clear()
    assert (
        _index(model, corpus_folder, out, "--fit-postprocess", "center", "--fit-limit", "5", "--overwrite", "--json")
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["reused"] == 5 and sum(forwarded) == report["chunks"]
    index, embedder = load_for_search(out)
    records = index.get(index.ids)
    np.testing.assert_allclose(
        index.vectors([r.id for r in records]), embedder.encode_documents([r.text for r in records]), atol=1e-5
    )


def test_index_append_reuses_the_statistics_and_refuses_others(checkpoints, corpus_folder, tmp_path, capsys) -> None:
    model, out = str(checkpoints["llama"]), tmp_path / "idx"
    assert _index(model, corpus_folder, out, "--fit-postprocess", "center") == 0
    (stats_file,) = out.glob("postprocess-*.safetensors")
    before = stats_file.read_bytes()
    (corpus_folder / "new.txt").write_text("a new document about something else entirely")
    capsys.readouterr()
    assert _index(model, corpus_folder, out, "--fit-postprocess", "center", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["embedded"] == 1 and report["skipped"] == len(CORPUS)
    assert stats_file.read_bytes() == before and list(out.glob("postprocess-*")) == [stats_file]  # not refitted
    assert report["embedder"]["postprocess"]["n"] == len(CORPUS)  # fitted on the first corpus only
    # without the flag, or with another kind: refused, saying what to do
    assert _index(model, corpus_folder, out) == 1
    assert "--fit-postprocess center" in capsys.readouterr().err
    assert _index(model, corpus_folder, out, "--fit-postprocess", "remove-top:2") == 1
    assert "fitted on its corpus as 'center'" in capsys.readouterr().err
    # --overwrite refits (another kind) and the old statistics go
    assert _index(model, corpus_folder, out, "--fit-postprocess", "remove-top:2", "--overwrite", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["embedder"]["postprocess"]["spec"]["kind"] == "remove-top"
    assert not stats_file.exists() and len(list(out.glob("postprocess-*.safetensors"))) == 1
    # an index built without a corpus fit does not start one when appending
    plain = tmp_path / "plain"
    assert _index(model, corpus_folder, plain) == 0
    assert _index(model, corpus_folder, plain, "--fit-postprocess", "center") == 1
    assert "built without a post-processing fitted on its corpus" in capsys.readouterr().err
    assert _index(model, corpus_folder, plain, "--fit-postprocess", "center", "--postprocess", "center") == 2


def test_a_damaged_or_swapped_statistics_file_in_an_index_is_refused(
    make_embedder, checkpoints, corpus_folder, tmp_path, capsys
) -> None:
    model, out = str(checkpoints["llama"]), tmp_path / "idx"
    assert _index(model, corpus_folder, out, "--fit-postprocess", "center") == 0
    (stats_file,) = out.glob("postprocess-*.safetensors")
    original = stats_file.read_bytes()
    # swapped: valid statistics of the same configuration, fitted on other texts
    raw = make_embedder("llama", method="kv", max_length=128)
    raw.fit_postprocess(TEXTS).save_postprocess(stats_file)
    with pytest.raises(IndexCorruptError, match="damaged or replaced"):
        load_for_search(out)
    with pytest.raises(IndexCorruptError, match="damaged or replaced"):
        VectorIndex.load(out)
    assert main(["search", str(out), "topic"]) == 1
    assert "damaged or replaced" in capsys.readouterr().err
    # damaged
    stats_file.write_bytes(original[:-8] + b"\x00" * 8)
    with pytest.raises(IndexCorruptError, match="checksum"):
        load_for_search(out)
    # missing
    stats_file.unlink()
    with pytest.raises(IndexCorruptError, match="missing"):
        load_for_search(out)
    stats_file.write_bytes(original)  # restored: fine again
    index, embedder = load_for_search(out)
    assert len(index.search(embedder.encode_queries("topic"), k=1)[0]) == 1
    # a querying embedder with other statistics is refused by the index, as any other embedder is
    with pytest.raises(EmbedderMismatchError, match="postprocess"):
        VectorIndex.load(out, embedder=raw.fit_postprocess(TEXTS).describe())


def test_the_langchain_store_reuses_the_index_statistics(checkpoints, corpus_folder, tmp_path) -> None:
    pytest.importorskip("langchain_core")
    langchain_kvembed = pytest.importorskip("langchain_kvembed")
    model, out = str(checkpoints["llama"]), tmp_path / "idx"
    assert _index(model, corpus_folder, out, "--fit-postprocess", "center") == 0
    (stats_file,) = out.glob("postprocess-*.safetensors")
    embeddings = langchain_kvembed.KVEmbeddings(model=model, max_length=128, postprocess=str(stats_file))
    store = langchain_kvembed.KVFaissVectorStore.load_local(out, embeddings)
    assert len(store.similarity_search("topic 2", k=2)) == 2
    with pytest.raises(EmbedderMismatchError):
        langchain_kvembed.KVFaissVectorStore.load_local(
            out, langchain_kvembed.KVEmbeddings(model=model, max_length=128, postprocess="none")
        )


def test_index_fit_limit_fits_on_a_seeded_sample(checkpoints, corpus_folder, tmp_path, capsys) -> None:
    model, out = str(checkpoints["llama"]), tmp_path / "idx"
    assert _index(model, corpus_folder, out, "--fit-limit", "5") == 2  # only with --fit-postprocess
    assert _index(model, corpus_folder, out, "--fit-postprocess", "none") == 2  # nothing to fit
    capsys.readouterr()
    assert _index(model, corpus_folder, out, "--fit-postprocess", "center", "--fit-limit", "5", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["embedder"]["postprocess"]["n"] == 5 and report["embedded"] == len(CORPUS)
