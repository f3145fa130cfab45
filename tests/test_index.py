"""The core FAISS index: ids, upsert, delete, filters, index types, atomic and verified persistence."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pytest

from kvembed_rag.retrieval.vector_index import (
    EmbedderMismatchError,
    IndexCorruptError,
    VectorIndex,
    attachment_file,
    check_compatible,
)

DIM = 8


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@pytest.fixture
def index() -> VectorIndex:
    idx = VectorIndex(DIM, embedder={"model": {"identity": "m1"}, "method": "kv", "layers": [3, 4]})
    idx.upsert(
        ["a", "b", "c"],
        _vectors(3),
        ["alpha", "beta", "gamma"],
        [{"lang": "en", "year": 2020}, {"lang": "de", "year": 2022}, {"lang": "en", "year": 2024}],
    )
    return idx


def test_search_is_cosine_highest_first(index):
    vectors = _vectors(3)
    hits = index.search(vectors[1] * 7.0, k=3)[0]  # scale does not matter: cosine
    assert hits[0].id == "b" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].score >= hits[1].score >= hits[2].score
    assert hits[0].text == "beta" and hits[0].metadata == {"lang": "de", "year": 2022}
    assert len(index.search(vectors[:2], k=10)) == 2  # one row per query, k capped at the size


def test_upsert_replaces_and_delete_ignores_unknown(index):
    index.upsert(["b"], _vectors(1, seed=9), ["beta v2"], [{"lang": "fr"}])
    assert len(index) == 3 and index.get(["b"])[0].text == "beta v2"
    assert index.delete(["a", "zzz"]) == 1
    assert index.delete(["zzz"]) == 0
    assert sorted(index.ids) == ["b", "c"]
    assert [r.id for r in index.get(["c", "nope", "b"])] == ["c", "b"]


def test_bad_input_changes_nothing(index):
    before = (sorted(index.ids), index.search(_vectors(1), 3))
    with pytest.raises(ValueError, match="repeats"):
        index.upsert(["x", "x"], _vectors(2))
    with pytest.raises(ValueError, match="NaN"):
        index.upsert(["x", "y"], np.array([[np.nan] * DIM, [1.0] * DIM]))
    with pytest.raises(ValueError, match="shape"):
        index.upsert(["x"], np.ones((1, DIM + 1)))
    with pytest.raises(TypeError, match=r"ids\[1\]"):
        index.upsert(["x", 5], _vectors(2))  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"metadatas\[0\]"):
        index.upsert(["x"], _vectors(1), metadatas=[{"f": object()}])
    with pytest.raises(ValueError, match="zeros"):
        index.upsert(["x"], np.zeros((1, DIM)))
    assert (sorted(index.ids), index.search(_vectors(1), 3)) == before


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"lang": "en"}, {"a", "c"}),
        ({"lang": ["de", "fr"]}, {"b"}),
        ({"year": {"$gte": 2022}}, {"b", "c"}),
        ({"$or": [{"lang": "de"}, {"year": 2024}]}, {"b", "c"}),
        ({"$not": {"lang": "en"}}, {"b"}),
        ({"lang": "en", "year": {"$lt": 2021}}, {"a"}),
        ({"missing": {"$ne": 1}}, {"a", "b", "c"}),
        (lambda m: m["year"] > 2021, {"b", "c"}),
        ({"lang": "xx"}, set()),
    ],
)
def test_metadata_filters(index, spec, expected):
    hits = index.search(_vectors(1, seed=5), k=10, filter=spec)[0]
    assert {h.id for h in hits} == expected


def test_bad_filters_are_clear_errors(index):
    with pytest.raises(ValueError, match=r"\$regex"):
        index.search(_vectors(1), filter={"lang": {"$regex": "e"}})
    with pytest.raises(ValueError, match=r"\$xor"):
        index.search(_vectors(1), filter={"$xor": []})


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat"])
def test_index_types_agree_on_small_data(factory, tmp_path):
    data = _vectors(300, seed=1)
    ids = [f"d{i}" for i in range(300)]
    exact = VectorIndex(DIM)
    exact.upsert(ids, data)
    approx = VectorIndex(DIM, factory=factory)
    approx.upsert(ids, data)
    approx.delete(ids[:10])
    exact.delete(ids[:10])
    queries = _vectors(5, seed=2)
    for a, b in zip(exact.search(queries, 5), approx.search(queries, 5), strict=True):
        assert len({h.id for h in a} & {h.id for h in b}) >= 3  # approximate, but close
        assert not {h.id for h in b} & set(ids[:10])
    approx.save(tmp_path / "i")
    again = VectorIndex.load(tmp_path / "i")
    assert sorted(again.ids) == sorted(approx.ids) and again.factory == factory


def test_hnsw_delete_then_compact():
    idx = VectorIndex(DIM, factory="HNSW32")
    idx.upsert([f"d{i}" for i in range(50)], _vectors(50))
    idx.delete(["d0", "d1"])
    assert idx._tombstones
    idx.compact()
    assert not idx._tombstones and idx._faiss.ntotal == 48
    assert idx.search(_vectors(50)[2], 1)[0][0].id == "d2"


def test_ivf_needs_enough_training_vectors():
    idx = VectorIndex(DIM, factory="IVF64,Flat")
    with pytest.raises(ValueError, match="trained"):
        idx.upsert(["a", "b"], _vectors(2))
    assert len(idx) == 0


def test_save_load_round_trip(index, tmp_path):
    folder = index.save(tmp_path / "idx")
    loaded = VectorIndex.load(folder)
    assert sorted(loaded.ids) == ["a", "b", "c"] and loaded.embedder == index.embedder
    q = _vectors(2, seed=3)
    assert [[(h.id, round(h.score, 5)) for h in r] for r in loaded.search(q, 3)] == [
        [(h.id, round(h.score, 5)) for h in r] for r in index.search(q, 3)
    ]
    loaded.upsert(["d"], _vectors(1, seed=4))  # labels continue after a reload
    assert len(loaded) == 4
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["docstore-1.json", "index-1.faiss", "manifest.json"]
    loaded.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["docstore-2.json", "index-2.faiss", "manifest.json"]


def test_crash_during_save_keeps_the_previous_index(index, tmp_path, monkeypatch):
    folder = index.save(tmp_path / "idx")
    index.upsert(["new"], _vectors(1, seed=8))
    import kvembed_rag.retrieval.vector_index as module

    real = module.write_bytes_atomically

    def dying(path, data, **kwargs):
        if path.name == "manifest.json":
            raise KeyboardInterrupt("killed mid-save")
        real(path, data, **kwargs)

    monkeypatch.setattr(module, "write_bytes_atomically", dying)
    with pytest.raises(KeyboardInterrupt):
        index.save(folder)
    monkeypatch.undo()
    assert sorted(VectorIndex.load(folder).ids) == ["a", "b", "c"]  # the old generation, intact


def _corrupt_cases(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    faiss_file = folder / manifest["files"]["index"]
    docstore = folder / manifest["files"]["docstore"]
    return manifest, faiss_file, docstore


def test_truncated_or_modified_files_are_detected(index, tmp_path):
    folder = index.save(tmp_path / "idx")
    _, faiss_file, docstore = _corrupt_cases(folder)
    data = faiss_file.read_bytes()
    faiss_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexCorruptError, match="checksum"):
        VectorIndex.load(folder)
    faiss_file.write_bytes(data)
    docstore.write_text(docstore.read_text().replace('"alpha"', '"ALPHA"'))
    with pytest.raises(IndexCorruptError, match="checksum"):
        VectorIndex.load(folder)


def test_attachments_travel_with_the_index_verified_and_opaque(index, tmp_path):
    stats = tmp_path / "stats.safetensors"
    stats.write_bytes(b"statistics the index never reads")
    with pytest.raises(ValueError, match="lowercase word"):
        index.attach("../escape", stats)
    with pytest.raises(FileNotFoundError):
        index.attach("postprocess", tmp_path / "missing.bin")
    index.attach("postprocess", stats)
    folder = index.save(tmp_path / "idx")
    found = attachment_file(folder, "postprocess")
    assert found is not None and found.parent == folder and found.read_bytes() == stats.read_bytes()
    assert found.name.startswith("postprocess-") and found.suffix == ".safetensors"
    assert attachment_file(folder, "other") is None
    # carried through load and re-save; a moved index still finds it
    loaded = VectorIndex.load(folder)
    assert loaded.attachments == {"postprocess": found}
    loaded.save(folder)
    moved = folder.rename(tmp_path / "moved")
    assert attachment_file(moved, "postprocess") == moved / found.name
    # a replaced attachment is refused by the loader and by attachment_file; a missing one too
    (moved / found.name).write_bytes(b"someone else's statistics")
    for read in (lambda: VectorIndex.load(moved), lambda: attachment_file(moved, "postprocess")):
        with pytest.raises(IndexCorruptError, match="checksum"):
            read()
    (moved / found.name).unlink()
    with pytest.raises(IndexCorruptError, match="missing"):
        VectorIndex.load(moved)
    # re-attaching other contents under the same name replaces the file at the next save; the old one goes
    fresh = tmp_path / "fresh"
    index.attach("postprocess", stats)
    index.save(fresh)
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"refitted statistics")
    index.attach("postprocess", other)
    index.save(fresh)
    files = sorted(p.name for p in fresh.glob("postprocess-*"))
    assert files == [attachment_file(fresh, "postprocess").name]  # type: ignore[union-attr]


def test_count_mismatch_is_detected(index, tmp_path):
    folder = index.save(tmp_path / "idx")
    manifest, _, docstore = _corrupt_cases(folder)
    store = json.loads(docstore.read_text())
    store["records"] = store["records"][:2]
    docstore.write_text(json.dumps(store))
    manifest["sha256"]["docstore"] = __import__("hashlib").sha256(docstore.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="do not belong together"):
        VectorIndex.load(folder)


def test_missing_manifest_or_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexCorruptError, match="manifest"):
        VectorIndex.load(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{oops")
    with pytest.raises(IndexCorruptError, match="JSON"):
        VectorIndex.load(tmp_path / "empty")


def test_paths_cannot_escape_the_index_directory(index, tmp_path):
    folder = index.save(tmp_path / "idx")
    manifest, _, _ = _corrupt_cases(folder)
    for name in ("../outside.faiss", "/etc/passwd", "sub/dir.faiss"):
        manifest["files"]["index"] = name
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(IndexCorruptError, match="leave the index directory"):
            VectorIndex.load(folder)


def test_planted_pickle_is_never_read(index, tmp_path, monkeypatch):
    folder = index.save(tmp_path / "idx")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name in ("index.pkl", "docstore.pkl", "index.faiss.pkl"):
        (folder / name).write_bytes(pickle.dumps(Exploit()))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads called"))
    assert sorted(VectorIndex.load(folder).ids) == ["a", "b", "c"]
    assert not marker.exists()


def test_querying_with_another_embedder_is_refused(index, tmp_path):
    folder = index.save(tmp_path / "idx")
    same = {"model": {"identity": "m1"}, "method": "kv", "layers": [3, 4], "dtype": "bfloat16"}
    assert VectorIndex.load(folder, embedder=same)
    with pytest.raises(EmbedderMismatchError, match="method"):
        VectorIndex.load(folder, embedder={**same, "method": "prompteol"})
    with pytest.raises(EmbedderMismatchError, match="model"):
        VectorIndex.load(folder, embedder={**same, "model": {"identity": "other"}})
    check_compatible(None, same)  # indexes built from plain vectors carry no embedder: nothing to check


# ---------------------------------------------------------------- several vectors per record (small-to-big)
def _multi(factory: str = "Flat", precision: str = "float32", hybrid: bool = False) -> tuple[VectorIndex, np.ndarray]:
    idx = VectorIndex(DIM, factory=factory, precision=precision, hybrid=hybrid or None)
    rows = _vectors(10, seed=3)
    idx.upsert(
        ["a", "b", "c"],
        rows,
        ["alpha passage", "beta passage", "gamma passage"],
        [{"n": 1}, {"n": 2}, {"n": 3}],
        vector_counts=[3, 5, 2],
    )
    return idx, rows


def _best(rows: np.ndarray, query: np.ndarray) -> dict[str, float]:
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cos = unit @ (query / np.linalg.norm(query))
    return {"a": float(cos[:3].max()), "b": float(cos[3:8].max()), "c": float(cos[8:].max())}


@pytest.mark.parametrize("factory", ["Flat", "HNSW16"])
def test_a_record_with_several_vectors_scores_as_its_best(factory):
    idx, rows = _multi(factory)
    assert len(idx) == 3 and idx.vector_count == 10 and idx.multi_vector
    for query in (rows[6], rows[1] + rows[9], _vectors(1, seed=9)[0]):
        expected = _best(rows, query)
        hits = idx.search(query, 3)[0]
        assert [h.id for h in hits] == sorted(expected, key=lambda key: -expected[key])  # each record once
        for hit in hits:
            assert hit.score == pytest.approx(expected[hit.id], abs=1e-5)
        filtered = idx.search(query, 3, filter={"n": {"$gte": 2}})[0]  # the exact path agrees
        assert [h.id for h in filtered] == [h.id for h in hits if h.id != "a"]
        assert [h.score for h in filtered] == pytest.approx([h.score for h in hits if h.id != "a"], abs=1e-5)
    assert [h.id for h in idx.search(rows[6], 1)[0]] == ["b"]


def test_several_vectors_per_record_round_trip_and_delete(tmp_path):
    idx, rows = _multi("HNSW16")
    idx.save(tmp_path / "i")
    again = VectorIndex.load(tmp_path / "i")
    assert again.vector_count == 10 and [h.id for h in again.search(rows[9], 3)[0]] == [
        h.id for h in idx.search(rows[9], 3)[0]
    ]
    np.testing.assert_allclose(
        again.record_vectors("b"), rows[3:8] / np.linalg.norm(rows[3:8], axis=1)[:, None], atol=1e-6
    )
    assert again.delete(["b"]) == 1 and again.vector_count == 5  # its five vectors go with it
    assert "b" not in {h.id for h in again.search(rows[5], 3)[0]}
    again.compact()
    again.save(tmp_path / "i")
    third = VectorIndex.load(tmp_path / "i")
    assert len(third) == 2 and third.vector_count == 5 and third._faiss.ntotal == 5
    again.upsert(["a"], rows[:1], ["alpha, now one vector"])  # replacing a record replaces all its vectors
    assert again.vector_count == 3 and again.record_vectors("a").shape == (1, DIM)


def test_several_vectors_per_record_in_the_hybrid_and_compact_precisions():
    for precision in ("int8", "binary"):
        idx, rows = _multi(precision=precision)
        assert [h.id for h in idx.search(rows[6], 1)[0]] == ["b"]
    idx, rows = _multi(hybrid=True)
    query = rows[9]
    dense = idx.search(query, 3)[0]
    zero = idx.search_hybrid(query, "passage", 3, hybrid="weighted:0+feedback:0")[0]
    assert [h.id for h in zero] == [h.id for h in dense]
    fused = idx.search_hybrid(query, "gamma", 3)[0]  # c: its best child and the only BM25 match
    assert fused[0].id == "c"
    mean = idx.vectors(["b"])[0]  # one direction per record (MMR): the normalised mean of its vectors
    unit = rows[3:8] / np.linalg.norm(rows[3:8], axis=1, keepdims=True)
    np.testing.assert_allclose(mean, unit.mean(0) / np.linalg.norm(unit.mean(0)), atol=1e-5)
    with pytest.raises(ValueError, match="several per record"):
        idx.search(query, 2, rescore={"a": rows[0], "b": rows[3], "c": rows[8]})


def test_vector_counts_are_validated_before_anything_changes():
    idx, rows = _multi()
    for counts, message in (([3, 5], "2 entries for 3 ids"), ([3, 5, 3], "add up to 11"), ([3, 0, 7], "positive")):
        with pytest.raises(ValueError, match=message):
            idx.upsert(["x", "y", "z"], rows, ["1", "2", "3"], vector_counts=counts)
    assert len(idx) == 3 and idx.vector_count == 10


def test_a_docstore_whose_vector_labels_do_not_add_up_is_refused(tmp_path):
    idx, _ = _multi()
    folder = idx.save(tmp_path / "i")
    manifest = json.loads((folder / "manifest.json").read_text())
    store = folder / manifest["files"]["docstore"]
    data = json.loads(store.read_text())
    data["records"][1]["further"] = data["records"][1]["further"][:2]  # two of b's vectors unaccounted for
    store.write_text(json.dumps(data))
    manifest["sha256"]["docstore"] = hashlib.sha256(store.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="do not belong together"):
        VectorIndex.load(folder)
