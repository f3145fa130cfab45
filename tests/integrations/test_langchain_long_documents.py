"""Long documents through LangChain alone: token-budget splitting, parent-document retrieval, caching."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_kvembed import KVEmbeddings, KVFaissVectorStore, KVParentDocumentRetriever, KVTokenTextSplitter
from long_document import NEEDLE, long_document

from kvembed_rag import PASSAGE_TOKENS, Chunking, ChunkingMismatchError, passage_input_tokens

#: identical prompts for both roles: a query equal to a chunk's text gets that chunk's vector exactly, so
#: the planted passage is found even by a random tiny model (what is tested here is the plumbing)
SAME_PROMPTS = {"document": "Passage: {text}", "query": "Passage: {text}"}


@pytest.fixture(scope="module")
def embeddings(checkpoints) -> KVEmbeddings:
    return KVEmbeddings(model=str(checkpoints["llama"]), prompts=SAME_PROMPTS, max_length=1024)


@pytest.fixture(scope="module")
def document(embeddings) -> tuple[str, int]:
    return long_document(30_000, lambda text: len(embeddings.embedder.token_offsets(text)))


def test_splitter_chunks_fit_the_window_with_the_prompt(embeddings, document):
    text, _ = document
    splitter = KVTokenTextSplitter(embeddings, chunk_overlap=32)
    chunks = splitter.split_documents([Document(page_content=text, metadata={"source": "long.txt"})])
    assert len(chunks) > 30
    embedder = embeddings.embedder
    for chunk in chunks:
        assert chunk.metadata["source"] == "long.txt"
        start, end = chunk.metadata["start_index"], chunk.metadata["end_index"]
        assert text[start:end] == chunk.page_content  # exact offsets into the original
        encoded = embedder.tokenize([chunk.page_content])[0]
        assert encoded.truncated_by == 0 and len(encoded.ids) <= embedder.max_length
    assert chunks[-1].metadata["end_index"] == len(text.rstrip()) or chunks[-1].metadata["end_index"] == len(text)
    # overlap: each chunk starts before the previous one ends
    assert all(b.metadata["start_index"] < a.metadata["end_index"] for a, b in itertools.pairwise(chunks))


def test_splitter_default_is_the_passage_size_capped_at_max_length(embeddings, document):
    text, _ = document
    embedder = embeddings.embedder  # max_length 1,024 here: below PASSAGE_TOKENS, so the window caps the passages
    default = KVTokenTextSplitter(embeddings, chunk_overlap=0).split_text(text)
    assert default == KVTokenTextSplitter(
        embeddings, chunk_size=passage_input_tokens(embedder), chunk_overlap=0
    ).split_text(text)
    assert passage_input_tokens(embedder) == embedder.max_length < PASSAGE_TOKENS
    smaller = KVTokenTextSplitter(embeddings, chunk_size=256, chunk_overlap=0).split_text(text)
    counts = [len(embedder.token_offsets(chunk)) for chunk in default]
    assert max(counts) <= embedder.max_length and max(counts) > embedder.max_length - 64
    assert len(smaller) > 3 * len(default)


def test_short_text_stays_whole(embeddings):
    splitter = KVTokenTextSplitter(embeddings)
    assert splitter.split_text("a short text") == ["a short text"]
    with pytest.raises(TypeError, match="KVEmbeddings or KVEmbedder"):
        KVTokenTextSplitter(object())


def test_30k_token_document_finds_the_planted_passage_near_its_end(embeddings, document, tmp_path):
    text, needle_at = document
    store = KVFaissVectorStore(embeddings)
    ids = store.add_documents(
        [
            Document(page_content=text, metadata={"title": "long"}, id="long"),
            Document(page_content="short one", id="s"),
        ],
        split=True,
    )
    assert ids == ["long", "s"]
    needle_chunk = next(d for d in store.get_by_ids([f"long#{n}" for n in range(500)]) if NEEDLE in d.page_content)
    assert needle_chunk.metadata["start_index"] > 0.9 * len(text)
    # plain search returns chunks
    best = store.similarity_search(needle_chunk.page_content, k=1)[0]
    assert best.id == needle_chunk.id and best.metadata["parent_id"] == "long"
    # parent search returns the whole document with its best passage
    for retriever in (KVParentDocumentRetriever(vectorstore=store, k=2), store.as_retriever(search_type="parent", k=2)):
        top = retriever.invoke(needle_chunk.page_content)[0]
        assert top.id == "long" and top.page_content == text
        assert NEEDLE in top.metadata["best_passage"]
        assert (
            top.metadata["best_start_index"]
            <= needle_at
            < top.metadata["best_start_index"] + len(top.metadata["best_passage"])
        )
    # persistence keeps the parents; re-adding replaces the chunks; deleting the parent removes them
    store.save_local(tmp_path / "idx")
    loaded = KVFaissVectorStore.load_local(tmp_path / "idx", embeddings)
    assert loaded.similarity_search_parents(needle_chunk.page_content, k=1)[0].id == "long"
    count = len(loaded.index)
    loaded.add_documents([Document(page_content=text, id="long")], split=True)
    assert len(loaded.index) == count
    loaded.delete(["long"])
    assert len(loaded.index) == 1 and loaded.similarity_search_parents("short one", k=1)[0].id == "s"


def test_cache_backed_embeddings_namespace_follows_the_configuration(checkpoints):
    cache_module = pytest.importorskip("langchain_classic.embeddings")
    from langchain_core.stores import InMemoryByteStore

    store = InMemoryByteStore()
    texts = ["alpha beta", "gamma delta"]

    def cached(**options):
        embeddings = KVEmbeddings(model=str(checkpoints["llama"]), **options)
        return embeddings, cache_module.CacheBackedEmbeddings.from_bytes_store(
            embeddings, store, namespace=embeddings.cache_namespace, query_embedding_cache=True, key_encoder="sha256"
        )

    plain, first = cached()
    assert plain.cache_namespace == f"kvembed-{plain.embedder.fingerprint}"
    vectors = first.embed_documents(texts)
    np.testing.assert_allclose(vectors, plain.embed_documents(texts), atol=1e-6)
    keys = set(store.yield_keys())
    assert len(keys) == 2 and all(key.startswith(plain.cache_namespace) for key in keys)
    _, again = cached()
    assert again.embed_documents(texts) == vectors and set(store.yield_keys()) == keys  # served from the cache
    other, changed = cached(bias=-2.0)
    assert other.cache_namespace != plain.cache_namespace
    fresh = changed.embed_documents(texts)
    np.testing.assert_allclose(fresh, other.embed_documents(texts), atol=1e-6)
    assert not np.allclose(fresh, vectors, atol=1e-4)  # not the stale vectors of the other configuration
    assert len(set(store.yield_keys())) == 4


def test_parents_are_saved_with_the_index_checksum_and_an_edited_file_is_refused(embeddings, tmp_path):
    import json

    from kvembed_rag import IndexCorruptError

    store = KVFaissVectorStore(embeddings)
    store.add_documents(
        [Document(page_content="alpha beta gamma", id="a"), Document(page_content="delta", id="d")], split=True
    )
    folder = tmp_path / "idx"
    store.save_local(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    parents_file = folder / manifest["attachments"]["parents"]["file"]
    assert parents_file.is_file() and not (folder / "parents.json").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging file left behind
    loaded = KVFaissVectorStore.load_local(folder, embeddings)
    assert loaded.similarity_search_parents("delta", k=1)[0].page_content == "delta"
    loaded.save_local(folder)  # saving again over itself keeps one parents file
    assert len([p for p in folder.iterdir() if p.name.startswith("parents")]) == 1
    # an edited parents file no longer passes silently
    parents_file.write_text(parents_file.read_text().replace("delta", "DELTA"))
    with pytest.raises(IndexCorruptError, match="parents"):
        KVFaissVectorStore.load_local(folder, embeddings)


def test_a_store_saved_with_a_plain_parents_file_still_loads(embeddings, tmp_path):
    import json

    store = KVFaissVectorStore(embeddings)
    store.add_documents([Document(page_content="alpha beta gamma", id="a")], split=True)
    folder = tmp_path / "idx"
    store.save_local(folder)
    # the layout before parents were an attachment: parents.json beside, not named by the manifest
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["attachments"].pop("parents")
    (folder / entry["file"]).rename(folder / "parents.json")
    manifest_path.write_text(json.dumps(manifest))
    loaded = KVFaissVectorStore.load_local(folder, embeddings)
    assert loaded.similarity_search_parents("alpha", k=1)[0].id == "a"
    loaded.save_local(folder)  # re-saved in the new layout
    assert not (folder / "parents.json").exists()
    assert "parents" in json.loads(manifest_path.read_text())["attachments"]


def test_parent_search_on_an_index_the_cli_built_returns_one_passage_per_document(embeddings, tmp_path):
    """``kvembed-rag index`` keeps passages (``document`` in their metadata), not whole documents: opened in
    LangChain, parent search still ranks documents by their best passage, one result each."""
    from kvembed_rag.retrieval.documents import SourceDocument
    from kvembed_rag.retrieval.pipeline import build_index

    long_text = " ".join(f"budget line {n} for the remote control project." for n in range(40))
    documents = [SourceDocument("long", "", long_text, "x"), SourceDocument("short", "", "a yellow case", "y")]
    build_index(embeddings.embedder, documents, tmp_path / "idx", hybrid=True, chunking=Chunking(passage_tokens=64))
    store = KVFaissVectorStore.load_local(tmp_path / "idx", embeddings)
    assert len(store.index) > 3  # the long document became several passages
    found = store.similarity_search_parents("budget line 7 for the remote control project.", k=2)
    assert [d.metadata["document"] for d in found] == ["long", "short"]  # one per document, best first
    assert all("best_score" in d.metadata for d in found)


def test_store_embeds_long_texts_as_pieces_and_returns_them_whole(embeddings, tmp_path):
    from kvembed_rag import passage_pieces

    text = " ".join(f"Sentence {i} of the report talks about item {i * 7}." for i in range(25))
    pieces = passage_pieces(embeddings.embedder, text, 48)
    assert len(pieces) > 2
    store = KVFaissVectorStore.from_texts([text, "A short note."], embeddings, ids=["long", "short"], child_tokens=48)
    assert len(store.index) == 2 and store.index.vector_count == len(pieces) + 1
    found, score = store.similarity_search_with_score(pieces[1], k=1)[0]  # the same prompt: the piece's own vector
    assert found.id == "long" and found.page_content == text and score == pytest.approx(1.0, abs=1e-4)
    store.save_local(tmp_path / "s")
    again = KVFaissVectorStore.load_local(tmp_path / "s", embeddings)
    assert again.index.vector_count == store.index.vector_count
    assert again.similarity_search(pieces[2], k=1)[0].id == "long"
    # the loaded store adds texts as the saved one did: a long text as its pieces, not one vector
    again.add_texts([text.replace("report", "memo")], ids=["memo"])
    assert again.index.vector_count == store.index.vector_count + len(pieces)
    with pytest.raises(ChunkingMismatchError, match="child_tokens=48"):
        KVFaissVectorStore.load_local(tmp_path / "s", embeddings, child_tokens=0)
    assert KVFaissVectorStore.load_local(tmp_path / "s", embeddings, child_tokens=48).index.vector_count > 2
    # a store over the index object itself adopts its piece size too, and refuses another
    wrapped, before = KVFaissVectorStore(embeddings, again.index), again.index.vector_count
    wrapped.add_texts([text.replace("report", "note")], ids=["note"])
    assert again.index.vector_count == before + len(pieces)
    with pytest.raises(ChunkingMismatchError, match="child_tokens=48"):
        KVFaissVectorStore(embeddings, again.index, child_tokens=256)
    whole = KVFaissVectorStore.from_texts([text], embeddings, child_tokens=0)
    assert whole.index.vector_count == 1
    whole.save_local(tmp_path / "w")
    with pytest.raises(ChunkingMismatchError, match="child_tokens=0"):
        KVFaissVectorStore.load_local(tmp_path / "w", embeddings, child_tokens=48)
