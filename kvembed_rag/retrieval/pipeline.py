"""Build and query a document index: long documents whole or chunked, resumable, skipping unchanged files.

Each indexed unit is a chunk (a whole document is one chunk) whose metadata names its document, the
document's content hash, its title and source. With ``child_tokens`` (small-to-big; off by default) a chunk is
embedded as its pieces of that many text tokens and stored with all their vectors: its dense score is its best
piece's, while its text (what BM25 indexes and a search returns) is the whole chunk.
``build_index`` saves checkpoints as it goes, so an interrupted build resumes without re-embedding finished
documents, and re-indexing skips documents whose content hash has not changed. ``search_documents`` ranks documents
by their best chunk. The index records how documents were cut (``chunking`` in its manifest: passage size, overlap,
pieces); adding documents cut another way is refused (:class:`~kvembed_rag.errors.ChunkingMismatchError`), since one
ranking would mix passage sizes.

Corpus-fitted post-processing (``kvembed-rag index --fit-postprocess center``): :func:`fit_index_postprocess`
fits the statistics on the raw document vectors of the chunks being indexed, writes them into the index folder
(``postprocess-<fingerprint>.safetensors``, its sha256 in the manifest) and returns the embedder that applies
them; the index records that embedder, so :func:`load_for_search` gives its queries the same statistics. An
index that has them keeps them: appending reuses them without refitting, ``overwrite`` refits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import (
    ChunkingMismatchError,
    ConfigError,
    EmbedderMismatchError,
    IndexCorruptError,
    PostprocessMismatchError,
)
from .chunking import Chunking, chunk_text, passage_input_tokens, passage_pieces
from .documents import SourceDocument
from .lexical import BM25Params
from .vector_index import MANIFEST, VectorIndex, attachment_file, attachment_file_name

logger = logging.getLogger(__name__)

T = TypeVar("T")


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass
class BuildReport:
    documents: int = 0
    embedded: int = 0
    reused: int = 0  # chunks post-processed from raw vectors the corpus fit had computed (not embedded again)
    skipped: int = 0
    replaced: int = 0
    chunks: int = 0
    tokens: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else None}


def _describe_chunking(record: dict[str, Any]) -> str:
    if record.get("long_docs") == "truncate":
        return "whole documents cut at max_length (long_docs='truncate')"
    tokens = record.get("passage_tokens")
    size = "as many text tokens as max_length holds" if not tokens else f"{tokens} text tokens"
    children = record.get("child_tokens")
    pieces = f", each embedded as pieces of {children} tokens" if children else ", one vector each"
    return f"passages of {size}, overlap {record.get('overlap')}{pieces}"


def stored_chunking(out_dir: str | Path) -> dict[str, Any] | None:
    """The chunking the index at ``out_dir`` records, or None (no index, or one saved before it was recorded)."""
    folder = Path(out_dir)
    if not (folder / MANIFEST).is_file():
        return None
    try:
        record = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("chunking")
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def check_chunking(stored: dict[str, Any] | None, wanted: dict[str, Any], where: Path) -> None:
    """Refuse to add passages cut as ``wanted`` to an index that records another cut (``stored``): a resumed build
    or an append would mix passage sizes in one ranking, and its unchanged documents would keep the old cut."""
    if stored is None or stored == wanted:
        return
    flag = (
        "--long-docs truncate"
        if stored.get("long_docs") == "truncate"
        else f"--passage-tokens {stored.get('passage_tokens')} --child-tokens {stored.get('child_tokens', 0)}"
    )
    raise ChunkingMismatchError(
        f"{where} holds {_describe_chunking(stored)}, not {_describe_chunking(wanted)}: adding to it would mix "
        f"passage sizes in one ranking. Add with its own cut ({flag}, or the recorded passage_tokens / long_docs / "
        "overlap in Python), or rebuild it with --overwrite (overwrite=True) to re-cut every document"
    )


def open_index(
    out_dir: Path, embedder: Any, *, overwrite: bool = False, hybrid: Any = None, bm25: Any = None
) -> VectorIndex:
    """The existing index in ``out_dir`` (checked against ``embedder``) or a new empty one.

    The index records ``embedder.describe()``, whose ``config`` entry is the resolved configuration:
    :func:`load_for_search` rebuilds exactly that embedder for the index's queries. ``overwrite``: start empty
    even if ``out_dir`` holds an index (built by any embedder); the old one is replaced at the first save.
    ``hybrid`` (``"rrf:0.5"``, ``True`` ...): keep BM25 beside the vectors with that default fusion (an existing
    index gets BM25 over its stored texts); ``None`` keeps what the index has. ``bm25`` (``"k1=2,b=0.5"``, a
    :class:`~kvembed_rag.retrieval.lexical.BM25Params`): BM25's parameters (``None``: a new store gets the shipped
    ones, an existing one keeps its own).
    """
    info = embedder.describe()
    if (out_dir / MANIFEST).is_file() and not overwrite:
        index = VectorIndex.load(out_dir, embedder=info)
        if hybrid is not None and hybrid is not False:
            index.enable_hybrid(hybrid, bm25=bm25)
        elif bm25 is not None:
            if index.lexical is None:
                raise ConfigError(f"{out_dir} has no BM25 to set the parameters of: add it with hybrid= (--hybrid)")
            index.lexical.set_params(BM25Params.parse(bm25))
    else:
        index = VectorIndex(embedder.dim, embedder=info, hybrid=hybrid, bm25=bm25)
    own = _own_stats(Path(out_dir), embedder)
    if own is not None:  # statistics fitted on this index's corpus travel with it, checksummed
        index.attach(POSTPROCESS_ATTACHMENT, own)
    return index


#: the attachment holding post-processing statistics fitted on the index's own corpus (``--fit-postprocess``)
POSTPROCESS_ATTACHMENT = "postprocess"


def _own_stats(folder: Path, embedder: Any) -> Path | None:
    """The statistics file ``embedder`` reads when it lies inside the index folder (a corpus fit), else None."""
    from ..config import is_stats_path

    value = str(getattr(getattr(embedder, "config", None), "postprocess", ""))
    if not is_stats_path(value) or getattr(embedder, "provenance", {}).get("postprocess") != "file":
        return None
    path = Path(value)
    return path if path.parent == folder.resolve() else None


def corpus_postprocess(out_dir: str | Path) -> str | None:
    """The post-processing the index at ``out_dir`` fitted on its own corpus (e.g. ``"center"``), or None."""
    from .. import postprocess as pp

    folder = Path(out_dir)
    if not (folder / MANIFEST).is_file():
        return None
    try:
        own = attachment_file(folder, POSTPROCESS_ATTACHMENT)
        return None if own is None else pp.spec_text(pp.PostprocessSpec.from_dict(pp.read_header(own)["spec"]))
    except (ValueError, AttributeError, IndexCorruptError):
        return None


def sample_texts(texts: list[str], limit: int | None, *, seed: int = 0) -> list[str]:
    """``texts`` or, when there are more than ``limit``, a seeded random ``limit`` of them in their order."""
    if limit is None or len(texts) <= limit:
        return texts
    chosen = np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))
    return [texts[i] for i in chosen]


def index_units(
    embedder: Any, document: SourceDocument, chunking: Chunking | None = None
) -> list[tuple[str, list[str]]]:
    """``(passage text, texts embedded for it)`` for each passage a document is indexed as (``chunking``, default
    ``Chunking()``): titled overlapping passages of ``passage_tokens`` text tokens (``long_docs="chunk"``;
    ``None`` or 0: as much as ``max_length`` holds) or the whole text (cut at ``max_length`` when embedded). With
    ``child_tokens`` each passage is embedded as its titled pieces of that many tokens (no overlap; a passage that
    fits is its own piece), else whole. Chunking needs the tokenizer only."""
    cut = chunking or Chunking()
    if cut.long_docs != "chunk":
        whole = f"{document.title}\n\n{document.text}" if document.title else document.text
        return [(whole, [whole])]
    size = passage_input_tokens(embedder, cut.passage_tokens)
    passages = chunk_text(embedder, document.text, title=document.title, max_tokens=size, overlap=cut.overlap)
    if not cut.child_tokens:
        return [(c.text, [c.text]) for c in passages]
    return [
        (
            passage.text,
            passage_pieces(
                embedder, document.text[passage.start : passage.end], cut.child_tokens, title=document.title
            ),
        )
        for passage in passages
    ]


def index_texts(embedder: Any, document: SourceDocument, chunking: Chunking | None = None) -> list[str]:
    """The texts a document's vectors come from (:func:`index_units`' embedded texts, in order)."""
    return [text for _, embedded in index_units(embedder, document, chunking) for text in embedded]


def fit_index_postprocess(
    embedder: Any,
    documents: Sequence[SourceDocument],
    out_dir: str | Path,
    spec: str,
    *,
    chunking: Chunking | None = None,
    overwrite: bool = False,
    limit: int | None = None,
    seed: int = 0,
    raw_vectors: dict[str, Any] | None = None,
) -> Any:
    """``embedder`` with post-processing ``spec`` fitted on the corpus of the index at ``out_dir``; build the index
    with the embedder returned (:func:`build_index`).

    A new index (or ``overwrite``): the statistics are fitted on the raw (un-post-processed) document vectors of
    every chunk of ``documents`` (a seeded sample of ``limit`` chunks, if given), saved atomically into
    ``out_dir`` and read back by the returned embedder (provenance ``"file"``). An existing index fitted before:
    its statistics are reused, not refitted (new documents are embedded like the old ones); it refuses a
    different ``spec`` or an index that was built without a corpus fit (:class:`EmbedderMismatchError`).

    ``raw_vectors``, a dict, receives each fitted chunk text's raw vector: give it to :func:`build_index` and
    those chunks are post-processed from it instead of being embedded a second time.
    """
    from .. import postprocess as pp

    folder = Path(out_dir)
    wanted = pp.parse_spec(spec)  # a bad spelling fails before any work
    if (folder / MANIFEST).is_file() and not overwrite:
        own = attachment_file(folder, POSTPROCESS_ATTACHMENT)
        if own is None:
            raise EmbedderMismatchError(
                f"{folder} was built without a post-processing fitted on its corpus; fitting one now would make its "
                "new vectors incomparable with the stored ones. Append without fitting, or rebuild it with overwrite"
            )
        stored = pp.PostprocessSpec.from_dict(pp.read_header(own)["spec"])
        if stored != wanted:
            raise EmbedderMismatchError(
                f"{folder}'s post-processing was fitted on its corpus as {pp.spec_text(stored)!r}, not {spec!r}; "
                f"append with {pp.spec_text(stored)!r} (its statistics are reused), or rebuild it with overwrite"
            )
        check_chunking(stored_chunking(folder), (chunking or Chunking()).record(), folder)
        return embedder.variant(postprocess=str(own))  # reused as stored: no refit
    texts = [text for document in documents for text in index_texts(embedder, document, chunking)]
    if not texts:
        raise ValueError("no documents to fit the post-processing on")
    texts = sample_texts(texts, limit, seed=seed)
    raw = embedder.raw().encode_documents(texts)  # (n, hidden) raw document vectors
    if raw_vectors is not None:
        raw_vectors.update(zip(texts, raw, strict=True))
    # queries are centred on the calibration texts embedded as queries (fit_postprocess's default), not on this
    # corpus's documents: with the corpus mean, whitening fitted on QMSum passages lost 0.07-0.16 nDCG@10 to the
    # shipped statistics and centring alone 0.29 (docs/RESULTS.md, "the corpus-fit trap")
    fitted = embedder.fit_postprocess(texts, spec, raw_vectors=raw)
    assert fitted.postprocess_stats is not None
    draft = folder / "postprocess-fitting.safetensors"
    fitted.save_postprocess(draft)  # atomic (a .part file renamed)
    # renamed to the name the index gives this attachment (content-addressed): saving the index copies nothing
    target = draft.replace(folder / attachment_file_name(POSTPROCESS_ATTACHMENT, draft))
    return fitted.variant(postprocess=str(target))


def stored_config(info: dict[str, Any]) -> Any:
    """The :class:`KVEmbedConfig` an index's embedder record holds, or None when it records none."""
    from ..config import KVEmbedConfig

    if isinstance(info.get("config"), dict):
        return KVEmbedConfig.from_dict(info["config"])
    return None


def _documents_in(index: VectorIndex) -> dict[str, tuple[str, list[str]]]:
    """document id -> (content hash, chunk ids) as stored."""
    found: dict[str, tuple[str, list[str]]] = {}
    for record in index.get(index.ids):
        meta = record.metadata
        doc = str(meta.get("document", record.id))
        digest, chunk_ids = found.get(doc, (str(meta.get("content_sha", "")), []))
        chunk_ids.append(record.id)
        found[doc] = (digest, chunk_ids)
    return found


def build_index(
    embedder: Any,
    documents: Sequence[SourceDocument],
    out_dir: str | Path,
    *,
    chunking: Chunking | None = None,
    checkpoint_seconds: float = 30.0,
    group_tokens: int = 32_768,
    progress: Callable[[int, int, int], None] | None = None,
    encode: Callable[[list[str]], Any] | None = None,
    overwrite: bool = False,
    raw_vectors: dict[str, Any] | None = None,
    hybrid: Any = None,
    bm25: Any = None,
) -> BuildReport:
    """Embed ``documents`` into the index at ``out_dir`` (created or updated). See the module docstring.

    ``progress(documents_done, tokens_done, tokens_total)`` is called once before the first batch, after
    every embedder batch and after every group (tokens as fed to the model, prompts included; documents
    count when their group is stored). ``encode`` replaces ``embedder.encode_documents`` (the Ray engine
    embeds each group on a cluster; progress then moves per group). ``overwrite`` rebuilds an index that
    another embedder made instead of refusing it (:class:`~kvembed_rag.errors.EmbedderMismatchError`).
    ``raw_vectors`` (text -> vector of ``embedder.raw()``, as :func:`fit_index_postprocess` fills it): chunks found
    there get ``embedder.apply_postprocess`` of that vector instead of a forward pass (``report.reused``).
    ``chunking`` (default ``Chunking()``): how documents are cut; with ``child_tokens`` (e.g.
    :data:`~kvembed_rag.config.CHILD_TOKENS`; default 0: one vector per chunk) each chunk is embedded as its pieces
    of that many tokens and keeps all their vectors (small-to-big, see the module docstring); token counts and
    progress count the pieces, as fed to the model. ``hybrid`` and ``bm25``: as :func:`open_index`.
    """
    custom_encode = encode
    cut = chunking or Chunking()
    folder = Path(out_dir)
    # refuses another embedder's index first
    index = open_index(folder, embedder, overwrite=overwrite, hybrid=hybrid, bm25=bm25)
    wanted = cut.record()
    check_chunking(index.chunking, wanted, folder)  # and another cut
    if index.chunking is None:  # a new index, or one saved before the cut was recorded
        if len(index):
            logger.warning("%s does not record how its %d passages were cut; recording %s", folder, len(index), wanted)
        index.chunking = wanted
    stored = _documents_in(index)
    report = BuildReport(documents=len(documents))
    seen: set[str] = set()
    pending: list[tuple[SourceDocument, str]] = []
    for document in documents:
        if document.id in seen:
            raise ValueError(f"document id {document.id!r} appears twice ({document.source}); ids must be unique")
        seen.add(document.id)
        digest = content_hash(document.text)
        if document.id in stored and stored[document.id][0] == digest:
            report.skipped += 1
            continue
        pending.append((document, digest))
    # work units: (document, digest, chunks as (chunk text, texts embedded for it), tokens per embedded text)
    units = []
    for document, digest in pending:
        chunks = index_units(embedder, document, cut)
        tokens = [len(e.ids) for e in embedder.tokenize([text for _, embedded in chunks for text in embedded])]
        units.append((document, digest, chunks, tokens))
    total_tokens = sum(sum(tokens) for *_, tokens in units)
    if progress is not None:
        progress(report.skipped, 0, total_tokens)
    start = last_save = time.perf_counter()
    done_tokens = 0
    group: list[tuple[SourceDocument, str, list[tuple[str, list[str]]], list[int]]] = []
    group_size = 0

    def flush() -> None:
        nonlocal group, group_size, done_tokens, last_save
        if not group:
            return
        texts = [text for _, _, chunks, _ in group for _, embedded in chunks for text in embedded]
        text_tokens = [n for *_, tokens in group for n in tokens]
        group_tokens_done = sum(text_tokens)
        known = [i for i, text in enumerate(texts) if raw_vectors and text in raw_vectors]
        todo = sorted(set(range(len(texts))) - set(known))
        vectors = np.empty((len(texts), embedder.dim), dtype=np.float32)  # (chunks, dim) unit rows
        if known:  # the corpus fit embedded these already: post-process their raw vectors, row by row
            assert raw_vectors is not None
            vectors[known] = embedder.apply_postprocess(np.stack([raw_vectors[texts[i]] for i in known]))
            report.reused += len(known)
        reused_tokens = sum(text_tokens[i] for i in known)
        todo_texts = [texts[i] for i in todo]
        if todo and custom_encode is not None:
            vectors[todo] = np.asarray(custom_encode(todo_texts), dtype=np.float32)
        elif todo:

            def on_batch(_texts_done: int, tokens_done: int) -> None:
                if progress is not None:
                    done = done_tokens + reused_tokens + tokens_done
                    progress(report.embedded + report.skipped, done, total_tokens)

            vectors[todo] = embedder.encode_documents(todo_texts, on_batch=on_batch if progress is not None else None)
        ids, metadatas, chunk_texts, counts = [], [], [], []
        for document, digest, chunks, _ in group:
            if document.id in stored:
                index.delete(stored[document.id][1])
                report.replaced += 1
            for number, (chunk, embedded) in enumerate(chunks):
                chunk_texts.append(chunk)
                counts.append(len(embedded))
                ids.append(f"{document.id}#{number}" if len(chunks) > 1 else document.id)
                metadatas.append(
                    {
                        "document": document.id,
                        "title": document.title,
                        "source": document.source,
                        "chunk": number,
                        "chunks": len(chunks),
                        "content_sha": digest,
                    }
                )
        index.upsert(ids, vectors, chunk_texts, metadatas, vector_counts=counts)
        report.embedded += len(group)
        report.chunks += len(chunk_texts)
        done_tokens += group_tokens_done
        report.tokens += group_tokens_done
        if progress is not None:
            progress(report.embedded + report.skipped, done_tokens, total_tokens)
        if time.perf_counter() - last_save >= checkpoint_seconds:
            index.save(folder)  # checkpoint: an interrupted build resumes from here
            last_save = time.perf_counter()
        group, group_size = [], 0

    for unit in units:
        group.append(unit)
        group_size += sum(unit[3])
        if group_size >= group_tokens:
            flush()
    flush()
    if units or overwrite or hybrid is not None or bm25 is not None or not (folder / MANIFEST).is_file():
        index.save(folder)
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class DocumentHit:
    document: str
    score: float
    title: str
    source: str
    chunk: int
    snippet: str


def best_per_document(hits: Iterable[T], document_of: Callable[[T], str], k: int | None = None) -> list[T]:
    """The first (best-ranked) hit of each document, in rank order, at most ``k`` of them.

    ``hits`` come best first; ``document_of(hit)`` names a hit's document. The one rule behind document-level
    retrieval by best chunk, for this pipeline and both framework adapters.
    """
    seen: set[str] = set()
    kept: list[T] = []
    for hit in hits:
        key = document_of(hit)
        if key in seen:
            continue
        seen.add(key)
        kept.append(hit)
        if k is not None and len(kept) == k:
            break
    return kept


def search_documents(
    index: VectorIndex,
    query_vector: Any,
    k: int = 5,
    *,
    snippet_chars: int = 240,
    query_text: str | None = None,
    hybrid: Any = None,
) -> list[DocumentHit]:
    """Top ``k`` documents, each scored by its best-matching chunk. An index with BM25 (built with ``hybrid``)
    fuses BM25 on ``query_text`` with the dense scores (``hybrid``: another fusion; ``False``: dense only)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}")
    hits = index.search_query(query_vector, query_text, max(k * 8, 32), hybrid=hybrid)[0]
    results = []
    for hit in best_per_document(hits, lambda h: str(h.metadata.get("document", h.id)), k):
        text = (hit.text or "").strip()
        title = str(hit.metadata.get("title", ""))
        if title and text.startswith(title):
            text = text[len(title) :].strip()
        results.append(
            DocumentHit(
                str(hit.metadata.get("document", hit.id)),
                hit.score,
                title,
                str(hit.metadata.get("source", "")),
                int(hit.metadata.get("chunk", 0)),
                " ".join(text[:snippet_chars].split()),
            )
        )
    return results


def load_for_search(out_dir: str | Path, **overrides: Any) -> tuple[VectorIndex, Any]:
    """Open an index and rebuild the embedder that made it (from its manifest); ``overrides`` that are not
    None (``device``, ``dtype``, ``batch_tokens`` ...) replace the recorded options.

    Post-processing fitted on the index's corpus is read from the index folder (wherever it was moved), after
    its checksum is verified (:class:`IndexCorruptError` when it was damaged or replaced)."""
    from ..embedder import KVEmbedder

    folder = Path(out_dir)
    if not (folder / MANIFEST).is_file():
        raise FileNotFoundError(f"{folder} is not a kvembed-rag index (no {MANIFEST}); build one with 'index'")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    record = manifest.get("embedder") or {}
    config = stored_config(record)
    if config is None:
        raise ValueError(f"{folder}: the index does not record the embedder that built it; pass --model")
    own = attachment_file(folder, POSTPROCESS_ATTACHMENT)
    if own is not None:  # the recorded absolute path may be where the index was built, not where it is now
        config = config.replace(postprocess=str(own))
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
    try:
        embedder = KVEmbedder.from_pretrained(config)
    except PostprocessMismatchError as exc:
        if own is None:
            raise
        raise IndexCorruptError(
            f"{folder}: the index's post-processing statistics are not its embedder's ({exc})"
        ) from None
    index = VectorIndex.load(folder, embedder=embedder.describe())
    built_in, searched_in = record.get("dtype"), embedder.describe()["dtype"]
    if built_in and built_in != searched_in:  # comparable vectors (the check ignores dtype), not identical ones
        logger.warning(
            "%s was built in %s and is searched in %s: scores shift by the dtypes' rounding (cosine >= 0.999 on "
            "the default model); pass dtype=%r for the exact vectors it stores",
            folder,
            built_in,
            searched_in,
            built_in,
        )
    return index, embedder
