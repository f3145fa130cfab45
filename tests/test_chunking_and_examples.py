"""Chunking only what does not fit, the offline corpora, and the examples run end to end on a tiny model."""

from __future__ import annotations

import itertools
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from kvembed_rag import PASSAGE_TOKENS, Chunking, TruncationWarning
from kvembed_rag.retrieval.chunking import chunk_text, passage_input_tokens, prompt_overhead, text_copies
from kvembed_rag.retrieval.documents import SourceDocument, read_folder, stdlib_documents
from kvembed_rag.retrieval.pipeline import index_texts

ROOT = Path(__file__).resolve().parents[1]
LONG = " ".join(f"Sentence {i} talks about retrieval, vectors and long meeting transcripts." for i in range(120))


def test_short_documents_stay_whole(make_embedder):
    embedder = make_embedder(max_length=512)
    chunks = chunk_text(embedder, "A short note.", title="Note")
    assert len(chunks) == 1 and "A short note." in chunks[0].text


def test_long_documents_become_titled_overlapping_windows_that_fit(make_embedder):
    embedder = make_embedder(max_length=256)
    chunks = chunk_text(embedder, LONG, title="Transcript 7", overlap=32)
    assert len(chunks) > 3
    assert all(c.text.startswith("Transcript 7\n\n") for c in chunks)
    assert all(a.end > b.start for a, b in itertools.pairwise(chunks))  # windows overlap
    assert chunks[0].start == 0 and chunks[-1].end == len(LONG)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)  # every chunk fits: nothing is cut
        embedder.encode_documents([c.text for c in chunks])


def test_chunks_fit_when_the_prompt_repeats_the_text(make_embedder):
    # echo feeds each chunk twice: a chunk sized for one copy would be cut to its first half, silently
    # dropping the rest of the document from the index
    single, echo = make_embedder(max_length=256), make_embedder(max_length=256, method="echo")
    assert text_copies(single) == 1 and text_copies(echo) == 2
    chunks = chunk_text(echo, LONG, title="Transcript 7", overlap=32)
    assert len(chunks) > 1.7 * len(chunk_text(single, LONG, title="Transcript 7", overlap=32))
    assert chunks[0].start == 0 and chunks[-1].end == len(LONG)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)
        echo.encode_documents([c.text for c in chunks])


def test_chunks_leave_room_for_htp_sentence_markers(make_embedder):
    # HTP adds two marker tokens per sentence: a chunk sized by its text tokens alone would lose its tail to them
    plain, htp = make_embedder(max_length=256), make_embedder(max_length=256, method="htp")
    text = " ".join(f"Point {i}." for i in range(400))  # short sentences: markers are a large share of the input
    assert plain.sentence_ends(text) is None
    ends = htp.sentence_ends(text)
    assert ends is not None and len(ends) == len(htp.token_offsets(text)) and sum(ends) >= 400
    chunks = chunk_text(htp, text, title="Transcript 7", overlap=32)
    assert len(chunks) > 1.1 * len(chunk_text(plain, text, title="Transcript 7", overlap=32))
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert all(a.end > b.start for a, b in itertools.pairwise(chunks))  # still overlapping windows
    encoded = htp.tokenize([c.text for c in chunks])
    assert all(e.truncated_by == 0 for e in encoded) and max(len(e.ids) for e in encoded) <= 256
    assert max(len(e.ids) for e in encoded) > 200  # and they still fill the window


def test_passages_hold_passage_tokens_of_text_at_most_max_length(make_embedder):
    embedder, echo = make_embedder(max_length=8192), make_embedder(max_length=8192, method="echo")
    assert PASSAGE_TOKENS == 2048  # docs/RESULTS.md, "Passage size beyond 512": the size indexes and splitters use
    assert passage_input_tokens(embedder) == PASSAGE_TOKENS + prompt_overhead(embedder) + 8
    assert passage_input_tokens(echo) == 2 * PASSAGE_TOKENS + prompt_overhead(echo) + 8  # echo feeds the text twice
    assert passage_input_tokens(embedder, 512) == 512 + prompt_overhead(embedder) + 8
    assert passage_input_tokens(embedder, 0) == passage_input_tokens(embedder, None) == 8192  # whole when it fits
    assert passage_input_tokens(make_embedder(max_length=256)) == 256  # never past the window
    with pytest.raises(ValueError, match="at least 16"):
        passage_input_tokens(embedder, 8)
    # the index cuts a long document into titled passages of at most the passage size, not the whole window
    text = LONG[: len(LONG) // 2]  # about 2,700 of the tiny tokenizer's tokens: fits 8,192, not 2,048
    assert 8192 > len(embedder.token_offsets(text)) > PASSAGE_TOKENS
    document = SourceDocument("long", "Transcript 7", text, "x")
    passages, small = (
        index_texts(embedder, document),
        index_texts(embedder, document, chunking=Chunking(passage_tokens=512)),
    )
    assert len(index_texts(embedder, document, chunking=Chunking(passage_tokens=0))) == 1
    for texts, size in ((passages, PASSAGE_TOKENS), (small, 512)):
        counts = [len(embedder.token_offsets(t)) for t in texts]
        assert len(texts) >= len(embedder.token_offsets(text)) // size and max(counts) <= size
        assert all(t.startswith("Transcript 7\n\n") for t in texts)
    assert len(passages) == 2 and len(small) >= 6
    assert index_texts(embedder, SourceDocument("s", "", "A short note.", "y")) == ["A short note."]


def test_passage_pieces_pack_whole_lines_and_window_only_an_overlong_line(make_embedder):
    from kvembed_rag import passage_pieces

    embedder = make_embedder(max_length=512)
    turns = [f"Speaker {i % 3}: item {i} of the agenda was discussed and agreed." for i in range(30)]
    long_turn = "Chair: " + " ".join(f"point {i} noted" for i in range(60))
    text = "\n".join([*turns[:15], long_turn, *turns[15:]])
    pieces = passage_pieces(embedder, text, 48)
    assert "".join(pieces) == text  # nothing lost, nothing repeated
    budget = 48 + 8
    assert all(len(embedder.token_offsets(piece)) <= budget for piece in pieces)
    windows = [piece for piece in pieces if piece.strip() in long_turn]  # the over-long line, cut by tokens
    assert len(windows) > 1 and "".join(windows).strip() == long_turn
    packed = [piece for piece in pieces if piece not in windows]
    assert all(piece.endswith("\n") or piece == pieces[-1] for piece in packed)  # the rest cut between lines
    assert all(line in turns for piece in packed for line in piece.splitlines())
    titled = passage_pieces(embedder, text, 48, title="Minutes")
    assert len(titled) >= len(pieces) and all(piece.startswith("Minutes\n\n") for piece in titled)
    assert passage_pieces(embedder, turns[0], 48) == [turns[0]]  # fits: the passage itself


def test_chunking_is_one_checked_value_that_records_itself_as_the_manifest_does() -> None:
    assert Chunking().record() == {"long_docs": "chunk", "passage_tokens": PASSAGE_TOKENS, "overlap": 64}
    pieces = Chunking(passage_tokens=None, overlap=0, child_tokens=256)
    assert pieces.record() == {"long_docs": "chunk", "passage_tokens": 0, "overlap": 0, "child_tokens": 256}
    whole = Chunking(long_docs="truncate", child_tokens=256)  # a whole text has no passages to cut into pieces
    assert whole.child_tokens == 0 and whole.record() == {"long_docs": "truncate"}
    with pytest.raises(ValueError, match="long_docs must be one of"):
        Chunking(long_docs="split")
    with pytest.raises(ValueError, match="overlap must be a non-negative int"):
        Chunking(overlap=-1)
    with pytest.raises(ValueError, match="child_tokens must be a non-negative int"):
        Chunking(child_tokens=True)


def test_too_small_window_is_an_error(make_embedder):
    with pytest.raises(ValueError, match="tokens per chunk"):
        chunk_text(make_embedder(max_length=40), LONG, title="A very long title " * 3)


def test_stdlib_corpus_is_long_and_offline():
    documents = stdlib_documents(["json", "textwrap", "no_such_module_xyz"])
    assert [d.id for d in documents] == ["stdlib:json", "stdlib:textwrap"]
    assert all(len(d.text) > 2000 for d in documents)


def test_read_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# Title A\n\nbody")
    (tmp_path / "sub" / "b.txt").write_bytes(b"first line\nsecond")
    (tmp_path / "ignored.bin").write_bytes(b"\x00")
    documents = read_folder(tmp_path)
    assert [(d.id, d.title) for d in documents] == [("a.md", "Title A"), ("sub/b.txt", "first line")]
    with pytest.raises(FileNotFoundError):
        read_folder(tmp_path / "missing")
    # one policy for every input file: invalid UTF-8 is refused, naming the file, offset and byte
    (tmp_path / "sub" / "c.txt").write_bytes(b"first line\n\xff broken byte")
    with pytest.raises(ValueError, match=r"c\.txt: not UTF-8 text: byte 0xff at offset 11 \(line 2\)"):
        read_folder(tmp_path)


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    (folder / "json.md").write_text("# json\n\nParse a JSON string into Python objects with json.loads. " * 30)
    (folder / "stats.txt").write_text("statistics\n\nmedian, mean and standard deviation of data. " * 10)
    (folder / "shell.txt").write_text("subprocess\n\nrun a shell command and capture its output.")
    return folder


@pytest.mark.parametrize(
    "argv",
    [
        ["examples/faiss_retriever.py"],
        ["examples/langchain_rag.py"],
        ["examples/langchain_rag.py", "--generate"],
        ["examples/llamaindex_rag.py"],
    ],
    ids=["faiss", "langchain", "langchain-generate", "llamaindex"],
)
def test_examples_run(argv, checkpoints, docs_folder, tmp_path):
    command = [
        sys.executable,
        *argv,
        "--model",
        str(checkpoints["llama"]),
        "--docs",
        str(docs_folder),
        "--max-length",
        "128",
    ]
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "KVEMBED_CACHE": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "json" in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.strip() and not last.rstrip().endswith("Answer:")  # ends with something useful
    if argv == ["examples/langchain_rag.py"]:
        assert "Best passage (" in result.stdout and "--generate" in last
    if "--generate" in argv:
        assert "Answer (local LLM" in result.stdout
