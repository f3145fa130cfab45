"""index / search / demo on a tiny model: resume, skip unchanged, long documents, broken inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvembed_rag import PASSAGE_TOKENS, Chunking
from kvembed_rag.cli import main
from kvembed_rag.errors import ChunkingMismatchError
from kvembed_rag.retrieval.documents import SourceDocument
from kvembed_rag.retrieval.pipeline import build_index, search_documents
from kvembed_rag.retrieval.vector_index import VectorIndex

LONG = " ".join(f"Paragraph {i}: the committee discussed the budget for remote controls." for i in range(60))


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "json.md").write_text("# json module\n\nParse JSON strings into Python objects with loads.")
    (folder / "csv.txt").write_text("csv module\n\nRead and write comma separated files.")
    (folder / "sub" / "meeting.txt").write_text("Product meeting\n\n" + LONG)
    (folder / "notes.jsonl").write_text(
        json.dumps({"key": "n1", "body": "Zip archives compress folders.", "title": "zipfile"}) + "\n"
    )
    return folder


def _index(model, corpus, out, *extra):
    return main(
        [
            "index",
            str(corpus),
            str(corpus / "notes.jsonl"),
            "--out",
            str(out),
            "--model",
            model,
            "--id-field",
            "key",
            "--text-field",
            "body",
            "--max-length",
            "128",
            "--json",
            "-q",
            *extra,
        ]
    )


def test_index_then_search(checkpoints, corpus, tmp_path, capsys):
    model, out = str(checkpoints["llama"]), tmp_path / "idx"
    assert _index(model, corpus, out) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["documents"] == 4 and report["embedded"] == 4 and report["chunks"] > 4  # the meeting is chunked
    assert main(["search", str(out), "JSON strings into Python objects", "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    documents = [h["document"] for h in result["hits"]]
    assert len(documents) == 3 and len(set(documents)) == 3  # documents, not chunks
    assert all(h["score"] <= 1.0 and h["snippet"] for h in result["hits"])
    assert main(["search", str(out), "budget of the committee", "-k", "2"]) == 0
    assert "1. " in capsys.readouterr().out


def test_search_runtime_flags_reach_the_rebuilt_embedder(checkpoints, corpus, tmp_path, capsys, monkeypatch):
    import kvembed_rag.retrieval.pipeline as pipeline

    model, out = str(checkpoints["llama"]), tmp_path / "idx"
    assert _index(model, corpus, out) == 0
    capsys.readouterr()
    seen = []
    original = pipeline.load_for_search

    def spy(folder, **overrides):
        seen.append(overrides)
        return original(folder, **overrides)

    monkeypatch.setattr(pipeline, "load_for_search", spy)
    assert main(["search", str(out), "budget", "--batch-tokens", "96", "--dtype", "float32", "--json"]) == 0
    assert seen == [{"device": None, "dtype": "float32", "batch_tokens": 96}]  # none dropped on the way


def test_reindex_skips_unchanged_and_replaces_changed(checkpoints, corpus, tmp_path, capsys):
    model, out = str(checkpoints["llama"]), tmp_path / "idx"
    assert _index(model, corpus, out) == 0
    first = json.loads(capsys.readouterr().out)
    assert _index(model, corpus, out) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["skipped"] == 4 and second["embedded"] == 0
    (corpus / "sub" / "meeting.txt").write_text("Product meeting\n\nA much shorter transcript now.")
    assert _index(model, corpus, out) == 0
    third = json.loads(capsys.readouterr().out)
    assert third["embedded"] == 1 and third["replaced"] == 1 and third["skipped"] == 3
    index = VectorIndex.load(out)
    assert first["chunks"] > len(index) == 4  # one chunk per document now
    assert not [i for i in index.ids if i.startswith("sub/meeting.txt#")]


def test_interrupted_build_resumes_without_re_embedding(make_embedder, tmp_path):
    embedder = make_embedder(max_length=128)
    documents = [SourceDocument(f"d{i}", f"title {i}", f"document number {i} " * 5, "test") for i in range(12)]
    calls: list[int] = []
    original = embedder.encode_documents

    def flaky(texts, **kwargs):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt("power cut")
        return original(texts, **kwargs)

    embedder.encode_documents = flaky
    try:
        with pytest.raises(KeyboardInterrupt):
            build_index(embedder, documents, tmp_path / "idx", group_tokens=20, checkpoint_seconds=0)
    finally:
        del embedder.encode_documents
    saved = VectorIndex.load(tmp_path / "idx")
    assert 0 < len(saved) < 12  # the finished groups survived
    report = build_index(embedder, documents, tmp_path / "idx")
    assert report.skipped == len(saved) and report.embedded == 12 - len(saved)
    assert sorted(VectorIndex.load(tmp_path / "idx").ids) == sorted(d.id for d in documents)


def test_truncate_policy_embeds_one_vector_per_document(make_embedder, tmp_path):
    embedder = make_embedder(max_length=64)
    documents = [SourceDocument("long", "Long", LONG, "x"), SourceDocument("short", "Short", "tiny", "y")]
    with pytest.warns(UserWarning, match="truncated"):
        report = build_index(embedder, documents, tmp_path / "idx", chunking=Chunking(long_docs="truncate"))
    assert report.chunks == 2
    hits = search_documents(VectorIndex.load(tmp_path / "idx"), embedder.encode_queries("budget"), k=5)
    assert {h.document for h in hits} == {"long", "short"}


def test_duplicate_document_ids_are_refused(make_embedder, tmp_path):
    documents = [SourceDocument("same", "", "a", "f1"), SourceDocument("same", "", "b", "f2")]
    with pytest.raises(ValueError, match="appears twice"):
        build_index(make_embedder(), documents, tmp_path / "idx")
    assert not (tmp_path / "idx").exists()


def test_search_errors(checkpoints, corpus, tmp_path, capsys):
    assert main(["search", str(tmp_path / "nothing"), "q"]) == 2  # usage: exit 2, before any model loads
    assert "not a kvembed-rag index" in capsys.readouterr().err
    out = tmp_path / "idx"
    assert _index(str(checkpoints["llama"]), corpus, out) == 0
    capsys.readouterr()
    for faiss_file in out.glob("index-*.faiss"):
        faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    assert main(["search", str(out), "q"]) == 1
    assert "checksum" in capsys.readouterr().err


def test_index_input_errors(checkpoints, tmp_path, capsys):
    model = str(checkpoints["llama"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{broken\n')
    assert main(["index", str(bad), "--out", str(tmp_path / "i"), "--model", model, "-q"]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert main(["index", str(tmp_path / "missing"), "--out", str(tmp_path / "i"), "--model", model]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["index", str(tmp_path / "empty"), "--out", str(tmp_path / "i"), "--model", model]) == 2


def test_index_refuses_another_embedder(checkpoints, corpus, tmp_path, capsys):
    out = tmp_path / "idx"
    assert _index(str(checkpoints["llama"]), corpus, out) == 0
    assert _index(str(checkpoints["llama"]), corpus, out, "--method", "mean") == 1
    assert "different embedder" in capsys.readouterr().err


def test_index_records_its_cut_and_refuses_another(make_embedder, tmp_path):
    embedder = make_embedder(max_length=256)
    long = SourceDocument("long", "Long", LONG, "x")
    out = tmp_path / "idx"
    build_index(embedder, [long], out, chunking=Chunking(passage_tokens=64))
    stored = VectorIndex.load(out)
    assert stored.chunking == {"long_docs": "chunk", "passage_tokens": 64, "overlap": 64}
    chunks = len(stored)
    other = SourceDocument("other", "Other", "A short note.", "y")
    with pytest.raises(ChunkingMismatchError, match=r"passages of 64 text tokens.*--passage-tokens 64"):
        build_index(embedder, [other], out, chunking=Chunking(passage_tokens=128))
    assert sorted(VectorIndex.load(out).ids) == sorted(stored.ids)  # nothing written
    with pytest.raises(ChunkingMismatchError, match="truncate"):
        build_index(embedder, [other], out, chunking=Chunking(long_docs="truncate"))
    assert (
        build_index(embedder, [long, other], out, chunking=Chunking(passage_tokens=64)).embedded == 1
    )  # its own cut: appends
    report = build_index(
        embedder, [long, other], out, overwrite=True, chunking=Chunking(passage_tokens=0)
    )  # re-cut everything
    assert report.embedded == 2 and len(VectorIndex.load(out)) < chunks + 1
    assert VectorIndex.load(out).chunking == {"long_docs": "chunk", "passage_tokens": 0, "overlap": 64}


def test_an_index_saved_before_cuts_were_recorded_adopts_the_current_one(make_embedder, tmp_path, caplog):
    embedder = make_embedder(max_length=128)
    out = tmp_path / "idx"
    build_index(embedder, [SourceDocument("a", "", "first note", "x")], out)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["chunking"]  # as saved by earlier versions
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert VectorIndex.load(out).chunking is None
    with caplog.at_level("WARNING"):
        build_index(embedder, [SourceDocument("b", "", "second note", "y")], out, chunking=Chunking(passage_tokens=512))
    assert "does not record how its 1 passages were cut" in caplog.text
    assert VectorIndex.load(out).chunking == {"long_docs": "chunk", "passage_tokens": 512, "overlap": 64}


def test_index_cli_appends_with_the_recorded_passage_size(checkpoints, corpus, tmp_path, capsys):
    model, out = str(checkpoints["llama"]), tmp_path / "idx"
    assert _index(model, corpus, out, "--passage-tokens", "48") == 0
    first = json.loads(capsys.readouterr().out)
    (corpus / "new.txt").write_text("A new note about parsing XML.")
    assert _index(model, corpus, out) == 0  # no flag: the index's own 48, not the default
    second = json.loads(capsys.readouterr().out)
    assert second["embedded"] == 1 and second["skipped"] == first["documents"]
    assert VectorIndex.load(out).chunking["passage_tokens"] == 48
    assert _index(model, corpus, out, "--passage-tokens", "64") == 1
    err = capsys.readouterr().err
    assert "passages of 48 text tokens" in err and "--passage-tokens 48" in err and "--overwrite" in err
    assert _index(model, corpus, out, "--overwrite") == 0  # a rebuild takes the default cut
    capsys.readouterr()
    assert VectorIndex.load(out).chunking["passage_tokens"] == PASSAGE_TOKENS


def test_index_cli_appends_whole_documents_to_a_truncating_index(checkpoints, corpus, tmp_path, capsys):
    model, out = str(checkpoints["llama"]), tmp_path / "idx"
    assert _index(model, corpus, out, "--long-docs", "truncate") == 0
    assert json.loads(capsys.readouterr().out)["chunks"] == 4  # one input per document
    (corpus / "new.txt").write_text("A new note about parsing XML.")
    assert _index(model, corpus, out) == 0  # no flag: the index's own policy
    assert json.loads(capsys.readouterr().out)["embedded"] == 1
    assert VectorIndex.load(out).chunking == {"long_docs": "truncate"}
    assert _index(model, corpus, out, "--long-docs", "chunk") == 1
    assert "--long-docs truncate" in capsys.readouterr().err
    assert _index(model, corpus, out, "--passage-tokens", "48") == 1  # passages asked for: refused, not ignored
    assert "--long-docs truncate" in capsys.readouterr().err


def test_demo_runs_offline(checkpoints, tmp_path, capsys):
    argv = [
        "demo",
        "--model",
        str(checkpoints["gemma3"]),
        "--out",
        str(tmp_path / "demo"),
        "--max-length",
        "256",
        "--limit",
        "4",
        "-q",
        "--question",
        "How do I parse JSON?",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Q: How do I parse JSON?" in text and "1. " in text and "stdlib:" in text
    assert main(argv) == 0  # second run reuses the index
    assert "0 embedded" in capsys.readouterr().out
    from kvembed_rag.retrieval.vector_index import VectorIndex

    assert VectorIndex.load(tmp_path / "demo").lexical is not None  # the shipped path: BM25 beside the vectors


def test_demo_default_index_lives_per_embedder_in_the_cache(checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KVEMBED_CACHE", str(tmp_path / "cache"))
    argv = ["demo", "--model", str(checkpoints["gemma3"]), "--max-length", "256", "--limit", "2", "-q"]
    assert main([*argv, "--question", "How do I parse JSON?"]) == 0  # no --out: the default folder
    folders = list((tmp_path / "cache" / "demo-index" / "kv").iterdir())
    assert len(folders) == 1 and (folders[0] / "manifest.json").is_file()  # one index, named by fingerprint
    assert main([*argv, "--method", "prompteol", "--question", "How do I parse JSON?"]) == 0
    assert (tmp_path / "cache" / "demo-index" / "prompteol").is_dir()  # another embedder, its own index
    capsys.readouterr()


def test_passages_are_embedded_as_their_pieces_and_scored_by_the_best(make_embedder, tmp_path):
    from kvembed_rag.retrieval.pipeline import index_units

    embedder = make_embedder(max_length=256)
    long = SourceDocument("long", "Long", LONG, "x")
    short = SourceDocument("short", "Short", "A short note on parsing XML.", "y")
    report = build_index(
        embedder, [long, short], tmp_path / "idx", hybrid=True, chunking=Chunking(passage_tokens=160, child_tokens=40)
    )
    index = VectorIndex.load(tmp_path / "idx")
    units = index_units(embedder, long, chunking=Chunking(passage_tokens=160, child_tokens=40))
    assert len(units) > 1 and all(len(children) > 1 for _, children in units)
    assert len(index) == len(units) + 1 == report.chunks  # records are the passages ...
    assert index.vector_count == sum(len(children) for _, children in units) + 1  # ... vectors their pieces
    passage, children = units[1]
    record = index.get(["long#1"])[0]
    assert record.text == passage and all(c.removeprefix("Long\n\n") in passage for c in children)
    query = embedder.encode_queries("the budget for remote controls")
    expected = max(float(v @ query) for v in embedder.encode_documents(children))
    hit = next(h for h in index.search(query, len(index))[0] if h.id == "long#1")
    assert hit.score == pytest.approx(expected, abs=1e-4)  # the passage's dense score is its best piece's
    assert index.chunking == {"long_docs": "chunk", "passage_tokens": 160, "overlap": 64, "child_tokens": 40}
    hits = search_documents(index, query, k=2, query_text="remote controls budget")  # hybrid: BM25 over passages
    assert hits[0].document == "long"
    whole = build_index(embedder, [long], tmp_path / "one", chunking=Chunking(passage_tokens=160, child_tokens=0))
    assert VectorIndex.load(tmp_path / "one").vector_count == whole.chunks == len(units)  # 0: one vector each


def test_index_cli_children_flag_and_an_index_recorded_before_children(checkpoints, corpus, tmp_path, capsys):
    model, out = str(checkpoints["llama"]), tmp_path / "idx"
    assert _index(model, corpus, out, "--passage-tokens", "96", "--child-tokens", "40") == 0
    capsys.readouterr()
    index = VectorIndex.load(out)
    assert index.chunking["child_tokens"] == 40 and index.vector_count > len(index)
    assert main(["search", str(out), "budget of the committee", "-k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["hits"][0]["document"] == "sub/meeting.txt"
    (corpus / "extra.txt").write_text("Extra notes\n\n" + LONG)
    assert _index(model, corpus, out) == 0  # no flag: appends in the index's own pieces
    capsys.readouterr()
    grown = VectorIndex.load(out)
    assert grown.chunking["child_tokens"] == 40 and grown.vector_count - len(grown) > index.vector_count - len(index)
    old = tmp_path / "old"
    assert _index(model, corpus, old, "--passage-tokens", "96") == 0  # the default: one vector per passage
    capsys.readouterr()
    assert "child_tokens" not in VectorIndex.load(old).chunking  # as an index built before pieces existed records
    (corpus / "new.txt").write_text("A new note about parsing XML.")
    assert _index(model, corpus, old) == 0
    capsys.readouterr()
    again = VectorIndex.load(old)
    assert again.vector_count == len(again) and "child_tokens" not in again.chunking
    assert _index(model, corpus, old, "--child-tokens", "40") == 1
    assert "one vector each" in capsys.readouterr().err
    assert main(["index", str(corpus), "--out", str(tmp_path / "x"), "--child-tokens", "8"]) == 2  # 0 or >= 16
