"""A FAISS vector index with string ids, upsert, delete, metadata and pickle-free, atomic persistence.

Similarity is cosine, computed as inner product on L2-normalised vectors (inputs are normalised on the
way in), so higher scores mean more similar. The default index is exact (``IndexFlatIP``); any FAISS
factory string works for large corpora, e.g. ``"HNSW32"`` or ``"IVF1024,Flat"`` (trained on the first
batch added, which must then hold enough vectors).

On disk an index is a directory::

    manifest.json           format, dim, factory, counts, the embedder's describe(), file names, sha256s
    index-<gen>.faiss       FAISS's own binary format
    docstore-<gen>.json     ids, texts and metadata (JSON: nothing executes when it is read)
    <name>-<sha16><suffix>  optional attachments: files the index carries for its users, opaque to it (the
                            pipeline attaches the post-processing statistics fitted on the corpus as
                            ``postprocess``), listed under ``attachments`` with their sha256s and verified on load
    bm25-<gen>.npz          optional (``hybrid=...``): the BM25 store of the records' texts, plain arrays (no
                            pickle), in ``files`` with its sha256; the fusion defaults under ``hybrid``

A save writes a new generation of the two data files, then replaces ``manifest.json`` atomically (the
commit point), then removes the old generation: a crash at any moment leaves the previous index or the
new one, never a mix. Loading verifies the checksums, the counts and that file names stay inside the
directory, and refuses an index built by another embedder when given the querying embedder's description.

Several vectors per record (``upsert(..., vector_counts=...)``): a record may carry the vectors of its
pieces (small-to-big retrieval: a 2,048-token passage keeps the vectors of its 256-token children), and its dense
score is the best of them. The record (text, metadata, BM25) is what a search returns; the extra vectors are
FAISS rows whose labels point at it (``further`` in the docstore).

Compact vectors (``precision``): ``"int8"`` stores FAISS scalar-quantised codes (``SQ8``: one byte per
dimension, per-dimension ranges trained on the first batch added, so make that batch representative);
``"binary"`` stores one bit per dimension (``IndexBinaryFlat`` / ``IndexBinaryHNSW``, Hamming distance),
scored as ``1 - 2·hamming/dim``, the cosine of the two sign patterns. ``search(..., rescore=...)`` re-ranks
a larger candidate list with float vectors the caller keeps elsewhere (a float index, a memory map).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import file_sha256, write_bytes_atomically
from ..config import vector_differences
from ..errors import EmbedderMismatchError, IndexCorruptError
from ..quantization import quantize_embeddings, unpack_binary
from .filters import Filter, compile_filter
from .lexical import BM25Params, BM25Store, HybridConfig, feedback_query, fuse, with_document_prior

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: attachment names: a word (they become file names inside the index directory)
ATTACHMENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_EXACT_FILTER_LIMIT = 20_000  # filtered searches over at most this many candidates are brute-forced exactly
#: metadata keys that name the document a record (a passage) was cut from, for the hybrid's document prior:
#: ``kvembed-rag index`` / ``build_index`` write ``document``, the LangChain store's ``add_documents(split=True)``
#: ``parent_id``, the LlamaIndex retriever ``ref_doc_id`` (a node's source document)
DOCUMENT_KEYS = ("document", "parent_id", "ref_doc_id")
#: what ``VectorIndex(precision=...)`` accepts; uint8/ubinary are the same storage as int8/binary
INDEX_PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
#: float vectors to re-rank with: a function from ids to ``(n, dim)`` rows, or a mapping id -> vector
Rescorer = Callable[[list[str]], Any] | Mapping[str, Any]


@dataclass
class Record:
    id: str
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Hit:
    id: str
    score: float
    text: str | None
    metadata: dict[str, Any]


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "kvembed-rag's vector index needs FAISS: pip install 'kvembed-rag[faiss]' (faiss-cpu) or "
            "'kvembed-rag[faiss-gpu]' (faiss-gpu-cu12); install only one of the two, they share the 'faiss' module"
        ) from exc
    return faiss


def check_compatible(stored: Mapping[str, Any] | None, querying: Mapping[str, Any] | None) -> None:
    """Raise :class:`EmbedderMismatchError` when two embedder descriptions would give incomparable vectors."""
    if not stored or not querying:
        return
    differences = vector_differences(stored, querying)
    if differences:
        detail = ", ".join(f"{k}: index={stored.get(k)!r} vs query={querying.get(k)!r}" for k in differences[:4])
        raise EmbedderMismatchError(
            f"this index was built with a different embedder ({detail}); query it with the embedder that built "
            "it, or re-index with the new one"
        )


def attachment_file_name(name: str, path: Path) -> str:
    """``<name>-<sha16><suffix>``: content-addressed, so re-attaching the same bytes keeps the same file."""
    return f"{name}-{file_sha256(path, memoise=False)[:16]}{path.suffix[:16]}"


def _verified_attachments(folder: Path, manifest: Mapping[str, Any]) -> dict[str, Path]:
    """The manifest's attachments as paths inside ``folder``, each present and matching its checksum."""
    entries = manifest.get("attachments") or {}
    if not isinstance(entries, Mapping):
        raise IndexCorruptError(f"{folder / MANIFEST}: 'attachments' must be an object")
    found: dict[str, Path] = {}
    for name, entry in entries.items():
        file = entry.get("file") if isinstance(entry, Mapping) else None
        if (
            not ATTACHMENT_NAME.fullmatch(str(name))
            or not isinstance(file, str)
            or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", file)
            or ".." in file
        ):
            raise IndexCorruptError(f"{folder / MANIFEST}: attachment {name!r}: {entry!r} is not valid")
        path = folder / file
        if not path.is_file():
            raise IndexCorruptError(
                f"{path} is missing: the {name!r} file this index was saved with; restore it, or rebuild the index"
            )
        if file_sha256(path, memoise=False) != entry.get("sha256"):
            raise IndexCorruptError(
                f"{path} does not match its checksum in {MANIFEST}: the index's {name!r} file was damaged or "
                "replaced; restore the original, or rebuild the index"
            )
        found[str(name)] = path
    return found


def attachment_file(folder: str | os.PathLike[str], name: str) -> Path | None:
    """The verified path of the index's attachment ``name`` (e.g. ``"postprocess"``), or None when it has none.
    Reads only the manifest and that file, so a caller can use it before loading the index (the pipeline builds
    the querying embedder from it). Raises :class:`IndexCorruptError` when it is missing, damaged or replaced."""
    directory = Path(folder)
    return _verified_attachments(directory, _read_manifest(directory)).get(name)


class VectorIndex:
    """FAISS-backed vectors with string ids, texts and metadata."""

    def __init__(
        self,
        dim: int,
        *,
        factory: str = "Flat",
        embedder: Mapping[str, Any] | None = None,
        precision: str = "float32",
        hybrid: HybridConfig | Mapping[str, Any] | str | bool | None = None,
        chunking: Mapping[str, Any] | None = None,
        bm25: BM25Params | str | None = None,
    ) -> None:
        """``hybrid`` (``True``, ``"rrf:0.5"``, a :class:`HybridConfig` ...): keep a BM25 store of the records'
        texts beside the vectors, and make that fusion :meth:`search_hybrid`'s default (see ``lexical.py``);
        ``bm25`` (``"k1=1.2,b=0.75"``, a :class:`BM25Params`; default the shipped ones): that store's parameters.
        ``chunking``: how documents were cut into the records (saved in the manifest; the index pipeline refuses
        to add passages cut another way)."""
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int; got {dim!r}")
        if precision not in INDEX_PRECISIONS:
            raise ValueError(f"precision must be one of {INDEX_PRECISIONS}; got {precision!r}")
        faiss = _faiss()
        self.dim = dim
        self.factory = factory
        self.precision = {"uint8": "int8", "ubinary": "binary"}.get(precision, precision)
        self.binary = self.precision == "binary"
        self.embedder: dict[str, Any] | None = dict(embedder) if embedder else None
        self.chunking: dict[str, Any] | None = dict(chunking) if chunking else None
        self._records: dict[int, Record] = {}
        self._label_of: dict[str, int] = {}
        self._tombstones: set[int] = set()  # labels deleted from indexes that cannot remove (HNSW)
        #: record label -> the labels of its further vectors (records with several, see ``vector_counts``)
        self._further: dict[int, list[int]] = {}
        self._owner: dict[int, int] = {}  # a further vector's label -> its record's label
        self._next_label = 0
        self.hybrid = HybridConfig.parse(hybrid)
        bm25_params = BM25Params.parse(bm25)
        self.lexical: BM25Store | None = BM25Store(bm25_params) if self.hybrid is not None else None
        #: name -> file, saved inside the index directory and verified on load (see :meth:`attach`)
        self.attachments: dict[str, Path] = {}
        if self.binary:
            if dim % 8:
                raise ValueError(f"binary precision packs 8 dimensions per byte; dim={dim} is not a multiple of 8")
            binary_factory = _binary_factory(factory)
            try:
                self._faiss: Any = faiss.IndexBinaryIDMap2(faiss.index_binary_factory(dim, binary_factory))
            except RuntimeError as exc:
                raise ValueError(f"invalid FAISS binary factory {binary_factory!r} (from {factory!r}): {exc}") from exc
            return
        effective = _sq8_factory(factory) if self.precision == "int8" else factory
        try:
            base = faiss.index_factory(dim, effective, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(f"invalid FAISS factory string {effective!r}: {exc}") from exc
        ivf = faiss.try_extract_index_ivf(base)
        if ivf is not None:
            # IVF indexes take our ids natively; a hashtable direct map lets them remove and reconstruct by id.
            # (Wrapping them in IndexIDMap would mislabel results after a removal: IVF does not renumber.)
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            ivf.nprobe = min(ivf.nlist, max(8, ivf.nlist // 16))  # FAISS's default of 1 list loses much recall
            self._faiss = base
        else:
            self._faiss = faiss.IndexIDMap2(base)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, item: object) -> bool:
        return item in self._label_of

    @property
    def ids(self) -> list[str]:
        return [record.id for record in self._records.values()]

    @property
    def vector_count(self) -> int:
        """Vectors stored for the live records (more than ``len(index)`` when records carry several)."""
        return len(self._records) + len(self._owner)

    @property
    def multi_vector(self) -> bool:
        """True when some record carries several vectors (scored by the best of them)."""
        return bool(self._further)

    # ------------------------------------------------------------------ writes
    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray | Sequence[Sequence[float]],
        texts: Sequence[str | None] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        vector_counts: Sequence[int] | None = None,
    ) -> list[str]:
        """Insert or replace records. Everything is validated before anything changes.

        ``vector_counts``: record ``i`` owns the next ``vector_counts[i]`` rows of ``vectors`` (default one each);
        a record with several is scored by the best of them (small-to-big: a passage and its children)."""
        matrix = self._check_vectors(vectors)
        rows = matrix.shape[0]
        ids = list(ids)
        n = len(ids)
        if vector_counts is None:
            if n != rows:
                raise ValueError(f"got {n} ids for {rows} vectors")
            counts = [1] * n
        else:
            counts = list(vector_counts)
            if len(counts) != n:
                raise ValueError(f"vector_counts has {len(counts)} entries for {n} ids")
            if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
                raise ValueError("vector_counts must be positive ints (every record needs at least one vector)")
            if sum(counts) != rows:
                raise ValueError(f"vector_counts add up to {sum(counts)} but {rows} vectors were given")
        texts = list(texts) if texts is not None else [None] * n
        metadatas = list(metadatas) if metadatas is not None else [None] * n
        if len(texts) != n or len(metadatas) != n:
            raise ValueError(f"texts ({len(texts)}) and metadatas ({len(metadatas)}) must match the {n} records")
        seen: dict[str, int] = {}
        for position, item in enumerate(ids):
            if not isinstance(item, str) or not item:
                raise TypeError(f"ids[{position}] must be a non-empty string; got {item!r}")
            if item in seen:
                raise ValueError(f"ids[{position}] repeats ids[{seen[item]}] ({item!r}) in one call")
            seen[item] = position
        records = []
        for position, (item, text, metadata) in enumerate(zip(ids, texts, metadatas, strict=True)):
            if text is not None and not isinstance(text, str):
                raise TypeError(f"texts[{position}] must be a string or None; got {type(text).__name__}")
            if metadata is not None and not isinstance(metadata, Mapping):
                raise TypeError(f"metadatas[{position}] must be a dict or None; got {type(metadata).__name__}")
            clean = dict(metadata or {})
            try:
                json.dumps(clean)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"metadatas[{position}] is not JSON-serialisable ({exc})") from exc
            records.append(Record(item, text, clean))
        if self.lexical is not None:
            missing = [position for position, text in enumerate(texts) if text is None]
            if missing:
                raise ValueError(f"a hybrid index needs every record's text for BM25; texts{missing[:5]} are None")
        if n == 0:
            return []
        codes = self._codes(matrix)
        self._train_if_needed(codes)
        self.delete([item for item in ids if item in self._label_of])
        labels = np.arange(self._next_label, self._next_label + rows, dtype=np.int64)
        self._faiss.add_with_ids(codes, labels)
        self._next_label += rows
        record_labels: list[int] = []
        position = 0
        for record, count in zip(records, counts, strict=True):
            label = int(labels[position])  # a record's label is its first vector's
            self._records[label] = record
            self._label_of[record.id] = label
            record_labels.append(label)
            if count > 1:
                further = labels[position + 1 : position + count].tolist()
                self._further[label] = further
                self._owner.update(dict.fromkeys(further, label))
            position += count
        if self.lexical is not None:
            self.lexical.upsert(record_labels, [str(text) for text in texts])
        return ids

    def delete(self, ids: Iterable[str]) -> int:
        """Remove records by id; unknown ids are ignored. Returns how many were removed."""
        labels = [self._label_of[item] for item in dict.fromkeys(ids) if item in self._label_of]
        if not labels:
            return 0
        rows = self._vector_labels(labels)
        array = np.asarray(rows, dtype=np.int64)
        try:
            removed = self._faiss.remove_ids(array)
            if removed != len(rows):
                raise RuntimeError(f"FAISS removed {removed} of {len(rows)} vectors")
        except RuntimeError:
            if self._faiss.ntotal and "HNSW" not in self.factory.upper():
                raise
            self._tombstones.update(rows)  # HNSW cannot remove: hide them, compact() drops them
        for label in labels:
            record = self._records.pop(label)
            del self._label_of[record.id]
            for further in self._further.pop(label, []):
                del self._owner[further]
        if self.lexical is not None:
            self.lexical.delete(labels)
        return len(labels)

    def enable_hybrid(
        self, hybrid: HybridConfig | Mapping[str, Any] | str | bool = True, bm25: BM25Params | str | None = None
    ) -> None:
        """Make this a hybrid index (BM25 over the stored texts) or change its default fusion; ``bm25``: BM25's
        parameters (a new store: default the shipped ones; an index that has BM25 keeps its own unless given)."""
        config = HybridConfig.parse(hybrid)
        params = BM25Params.parse(bm25)
        if config is None:
            raise ValueError("enable_hybrid needs a fusion (True, 'rrf:0.5', ...); to drop BM25, rebuild the index")
        if self.lexical is None:
            untexted = [r.id for r in self._records.values() if r.text is None]
            if untexted:
                raise ValueError(f"records {untexted[:5]} have no text for BM25: re-add them with their texts")
            store = BM25Store(params)
            store.upsert(list(self._records), [str(r.text) for r in self._records.values()])
            self.lexical = store
        elif bm25 is not None:
            self.lexical.set_params(params)  # BM25 re-scores from the stored tokens: nothing is re-read
        self.hybrid = config

    def compact(self) -> None:
        """Rebuild the FAISS index without deleted vectors (only needed for HNSW)."""
        if not self._tombstones:
            return
        live = sorted(self._vector_labels(list(self._records)))
        vectors = self._reconstruct(live, raw=True)
        fresh = VectorIndex(self.dim, factory=self.factory, embedder=self.embedder, precision=self.precision)
        if live:
            fresh._train_if_needed(vectors)
            fresh._faiss.add_with_ids(vectors, np.asarray(live, dtype=np.int64))
        self._faiss, self._tombstones = fresh._faiss, set()

    # ------------------------------------------------------------------ reads
    def get(self, ids: Iterable[str]) -> list[Record]:
        """Records for the ids that exist, in the order asked."""
        return [self._records[self._label_of[item]] for item in ids if item in self._label_of]

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored (normalised) vectors ``(n, dim)`` of existing ids, in order (decoded: int8 codes give
        approximate floats, binary codes ±1/√dim sign vectors). A record with several vectors gives their
        normalised mean (one direction for it, e.g. for MMR); :meth:`record_vectors` gives them all."""
        labels = [self._label_of[item] for item in ids if item in self._label_of]
        rows = self._reconstruct(labels)
        for position, label in enumerate(labels):
            if label in self._further:
                mean = self._reconstruct([label, *self._further[label]]).mean(axis=0)
                rows[position] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        return rows

    def record_vectors(self, item: str) -> np.ndarray:
        """Every vector record ``item`` carries, ``(m, dim)`` (its children's for a small-to-big record)."""
        if item not in self._label_of:
            raise KeyError(item)
        return self._reconstruct(self._vector_labels([self._label_of[item]]))

    def search(
        self,
        queries: np.ndarray | Sequence[float] | Sequence[Sequence[float]],
        k: int = 4,
        *,
        filter: Filter | None = None,
        rescore: Rescorer | None = None,
        rescore_multiplier: int = 4,
    ) -> list[list[Hit]]:
        """Top-``k`` hits per query row, highest cosine first. A 1-D query gives a one-row result.

        With ``rescore`` (float vectors by id: a function such as ``float_index.vectors``, or a mapping), the
        ``k * rescore_multiplier`` best hits by this index's own codes are re-ranked by the exact cosine with
        those vectors: most of float32's ranking at the codes' memory cost, plus wherever the floats live.
        """
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative int; got {k!r}")
        if rescore is not None:
            return self._rescored(queries, k, filter, rescore, rescore_multiplier)
        matrix = self._check_vectors(queries, what="query")
        if k == 0 or not self._records or matrix.shape[0] == 0:
            return [[] for _ in range(matrix.shape[0])]
        predicate = compile_filter(filter)
        # k records need at most k * (vectors per record) rows: a record's further vectors rank below its best
        fanout = 1 + max(map(len, self._further.values()), default=0)
        if predicate is None and not self._tombstones:
            scores, labels = self._faiss.search(self._codes(matrix), min(k * fanout, self.vector_count))
            scores = self._scores(scores)
            return [self._hits(s, ls)[:k] for s, ls in zip(scores, labels, strict=True)]
        allowed = [label for label, record in self._records.items() if predicate is None or predicate(record.metadata)]
        if not allowed:
            return [[] for _ in range(matrix.shape[0])]
        if len(allowed) <= _EXACT_FILTER_LIMIT:  # exact over the candidates: no recall loss from graph search
            if self.binary:  # score sign patterns against sign patterns, as the unfiltered search does
                matrix = unpack_binary(self._codes(matrix), self.dim)
            similarity = self._record_scores(allowed, matrix)  # (q, m)
            top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
            return [[self._hit(allowed[j], float(similarity[row, j])) for j in top[row]] for row in range(len(matrix))]
        faiss = _faiss()
        rows = self._vector_labels(allowed)
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.asarray(rows, dtype=np.int64)))
        scores, labels = self._faiss.search(self._codes(matrix), min(k * fanout, len(rows)), params=params)
        scores = self._scores(scores)
        return [self._hits(s, ls)[:k] for s, ls in zip(scores, labels, strict=True)]

    def search_query(
        self,
        queries: np.ndarray | Sequence[float] | Sequence[Sequence[float]],
        query_texts: str | Sequence[str] | None,
        k: int = 4,
        *,
        hybrid: HybridConfig | Mapping[str, Any] | str | bool | None = None,
        filter: Filter | None = None,
    ) -> list[list[Hit]]:
        """The shipped retrieval path for a query: :meth:`search_hybrid` when this index keeps BM25 and the query's
        text is given, else :meth:`search` (dense). ``hybrid=False``: dense even on a hybrid index; another
        fusion: that one instead of the index's default."""
        if self.lexical is not None and query_texts is not None and hybrid is not False:
            return self.search_hybrid(queries, query_texts, k, hybrid=hybrid, filter=filter)
        return self.search(queries, k, filter=filter)

    def search_hybrid(
        self,
        queries: np.ndarray | Sequence[float] | Sequence[Sequence[float]],
        query_texts: str | Sequence[str],
        k: int = 4,
        *,
        hybrid: HybridConfig | Mapping[str, Any] | str | bool | None = None,
        filter: Filter | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits per query by the fusion of dense and BM25 scores (``hybrid``: this index's default).

        Candidates are the union of the dense top-N and the BM25 top-N (N = ``candidates``, at least ``k``), each
        scored by both (the dense score exactly, from the stored vectors); ``Hit.score`` is the fused score.
        With the config's ``feedback`` N (default 5), the fused top N move the query towards their stored vectors
        and the fusion runs again from a second dense search (no forward pass). With ``document_prior`` W (default
        0.5) the fused top N rise by W times their document's best score (records' ``document`` / ``parent_id`` /
        ``ref_doc_id`` metadata, :data:`DOCUMENT_KEYS`). With feedback 0, document prior 0 and weight 0 the order is
        :meth:`search`'s.
        """
        if self.lexical is None:
            raise ValueError("this index keeps no BM25 store: build it with hybrid=... (CLI: index --hybrid)")
        config = HybridConfig.parse(hybrid) if hybrid is not None else self.hybrid
        config = config or HybridConfig()
        matrix = self._check_vectors(queries, what="query")
        texts = [query_texts] if isinstance(query_texts, str) else list(query_texts)
        if len(texts) != matrix.shape[0]:
            raise ValueError(f"got {len(texts)} query texts for {matrix.shape[0]} query vectors")
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative int; got {k!r}")
        if k == 0 or not self._records:
            return [[] for _ in texts]
        predicate = compile_filter(filter)
        count = max(config.candidates, k)
        lexical_sides: list[tuple[dict[int, float], list[int]]] = []  # per query: BM25 scores by label, BM25's top
        fusions: list[tuple[list[int], np.ndarray]] = []  # per query: candidate labels, fused scores
        for row, text, dense_hits in zip(matrix, texts, self.search(matrix, count, filter=filter), strict=True):
            labels, scores = self.lexical.scores(text)
            if predicate is not None:
                keep = np.asarray([predicate(self._records[int(label)].metadata) for label in labels], dtype=bool)
                labels, scores = labels[keep], scores[keep]
            bm25 = dict(zip(labels.tolist(), scores.tolist(), strict=True))
            lexical_top = [int(labels[p]) for p in np.argsort(-scores, kind="stable")[:count].tolist()]
            lexical_sides.append((bm25, lexical_top))
            fusions.append(self._fused_candidates(row, dense_hits, bm25, lexical_top, config))
        fed = [i for i, (union, _) in enumerate(fusions) if config.feedback and union]
        if fed:
            # Rocchio: each query's fused top passages move it; one batched dense search runs from the moved queries
            moved = np.stack([self._moved_query(matrix[i], fusions[i], config) for i in fed])  # (fed, dim)
            for i, query, again in zip(fed, moved, self.search(moved, count, filter=filter), strict=True):
                fusions[i] = self._fused_candidates(query, again, *lexical_sides[i], config)
        results: list[list[Hit]] = []
        for union, fused in fusions:
            # each candidate's document, only when the prior reads them (no metadata lookups otherwise)
            documents = [self._document_of(label) for label in union] if config.document_prior else []
            top, scores = with_document_prior(fused, documents, config, count)
            order = np.argsort(-scores, kind="stable")[:k]
            results.append([self._hit(union[top[i]], float(scores[i])) for i in order])
        return results

    def _document_of(self, label: int) -> tuple[str, Any]:
        """The document a record belongs to for the document prior: the first of :data:`DOCUMENT_KEYS` in its
        metadata, else the record itself."""
        metadata = self._records[label].metadata
        for key in DOCUMENT_KEYS:
            if metadata.get(key) is not None:
                return ("document", str(metadata[key]))
        return ("record", label)

    def _moved_query(self, query: np.ndarray, fusion: tuple[list[int], np.ndarray], config: HybridConfig) -> np.ndarray:
        """``(dim,)`` ``query`` moved towards the stored vectors of its fused top ``config.feedback`` records."""
        union, fused = fusion
        top = [union[i] for i in np.argsort(-fused, kind="stable")[: config.feedback]]
        fed_back = self.vectors([self._records[label].id for label in top])  # (feedback, dim)
        return feedback_query(query, fed_back, config.feedback_weight)

    def _fused_candidates(
        self,
        query: np.ndarray,
        dense_hits: list[Hit],
        bm25: Mapping[int, float],
        lexical_top: list[int],
        config: HybridConfig,
    ) -> tuple[list[int], np.ndarray]:
        """The union of the dense hits and BM25's top (labels) and their fused scores ``(m,)``."""
        union = [self._label_of[hit.id] for hit in dense_hits]
        chosen = set(union)
        union += [label for label in lexical_top if label not in chosen]
        if not union:
            return union, np.zeros(0)
        query = unpack_binary(self._codes(query[None, :]), self.dim)[0] if self.binary else query
        dense = self._record_scores(union, query[None, :])[0]  # (m,) exact cosine of every candidate
        lexical = np.asarray([bm25.get(label, 0.0) for label in union])
        return union, fuse(dense, lexical, fusion=config.fusion, weight=config.weight)

    def _rescored(
        self, queries: Any, k: int, filter: Filter | None, rescore: Rescorer, multiplier: int
    ) -> list[list[Hit]]:
        if not isinstance(multiplier, int) or multiplier < 1:
            raise ValueError(f"rescore_multiplier must be a positive int; got {multiplier!r}")
        if self._further:
            raise ValueError(
                "rescore takes one float vector per id, and this index keeps several per record (small-to-big); "
                "search it without rescore"
            )
        matrix = self._check_vectors(queries, what="query")
        results: list[list[Hit]] = []
        for row, candidates in zip(matrix, self.search(matrix, k * multiplier, filter=filter), strict=True):
            if not candidates:
                results.append([])
                continue
            ids = [hit.id for hit in candidates]
            if isinstance(rescore, Mapping):
                floats = np.asarray([rescore[item] for item in ids], dtype=np.float32)
            else:
                floats = np.asarray(rescore(ids), dtype=np.float32)
            if floats.shape != (len(ids), self.dim):
                raise ValueError(
                    f"rescore returned shape {floats.shape} for {len(ids)} ids; expected ({len(ids)}, {self.dim})"
                )
            floats = floats / np.maximum(np.linalg.norm(floats, axis=1, keepdims=True), 1e-12)
            exact = floats @ row
            order = np.argsort(-exact, kind="stable")[:k]
            results.append(
                [Hit(candidates[i].id, float(exact[i]), candidates[i].text, candidates[i].metadata) for i in order]
            )
        return results

    def attach(self, name: str, path: str | os.PathLike[str]) -> None:
        """Carry the file ``path`` with the index as ``name``: :meth:`save` copies it into the index directory
        (content-addressed, with its sha256 in the manifest), :meth:`load` verifies it, and
        :func:`attachment_file` finds it, wherever the index was moved. The index never reads it: what it means
        is its user's business (the pipeline attaches corpus-fitted post-processing statistics)."""
        if not ATTACHMENT_NAME.fullmatch(name):
            raise ValueError(f"an attachment name is a lowercase word (it names a file); got {name!r}")
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"cannot attach {name!r}: no file at {source}")
        self.attachments[name] = source

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write atomically (see the module docstring). Returns the directory."""
        faiss = _faiss()
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        # a generation number no file in the folder uses yet (even if the old manifest is damaged)
        used = [int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"\w+-(\d+)\.\w+", p.name))]
        generation = max(used, default=0) + 1
        names = {"index": f"index-{generation}.faiss", "docstore": f"docstore-{generation}.json"}
        if self.lexical is not None:
            names["bm25"] = f"bm25-{generation}.npz"
            write_bytes_atomically(folder / names["bm25"], self.lexical.to_bytes(), fsync=True)
        docstore = {
            "records": [
                {"label": label, "id": r.id, "text": r.text, "metadata": r.metadata}
                | ({"further": self._further[label]} if label in self._further else {})
                for label, r in self._records.items()
            ],
            "tombstones": sorted(self._tombstones),
        }
        write_bytes_atomically(
            folder / names["docstore"], json.dumps(docstore, ensure_ascii=False).encode("utf-8"), fsync=True
        )
        serialize = faiss.serialize_index_binary if self.binary else faiss.serialize_index
        write_bytes_atomically(folder / names["index"], serialize(self._faiss).tobytes(), fsync=True)
        attached: dict[str, dict[str, str]] = {}
        for name, source in sorted(self.attachments.items()):
            file = attachment_file_name(name, source)
            if source.resolve() != (folder / file).resolve():
                write_bytes_atomically(folder / file, source.read_bytes(), fsync=True)
            attached[name] = {"file": file, "sha256": file_sha256(folder / file, memoise=False)}
        try:  # what the manifest being replaced attached: files no longer named go after the commit
            previous = _read_manifest(folder).get("attachments") or {}
            earlier = {str(e.get("file")) for e in previous.values() if isinstance(e, Mapping)}
        except (IndexCorruptError, AttributeError):
            earlier = set()
        manifest = {
            "format": FORMAT_VERSION,
            "generation": generation,
            "dim": self.dim,
            "factory": self.factory,
            "precision": self.precision,
            "metric": "hamming" if self.binary else "inner_product",
            "count": len(self._records),
            "next_label": self._next_label,
            "embedder": self.embedder,
            "hybrid": None if self.hybrid is None else self.hybrid.to_dict(),
            "chunking": self.chunking,
            "files": names,
            "sha256": {key: file_sha256(folder / name, memoise=False) for key, name in names.items()},
            "attachments": attached,
        }
        write_bytes_atomically(
            folder / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"), fsync=True
        )  # the commit point
        keep = set(names.values()) | {MANIFEST} | {entry["file"] for entry in attached.values()}
        for stale in folder.iterdir():
            old_data = re.fullmatch(r"(index|docstore|bm25)-\d+\.(faiss|json|npz)", stale.name)
            # an attachment the replaced manifest named and this one does not (an --overwrite rebuild refits)
            if stale.name not in keep and (old_data or stale.name in earlier):
                stale.unlink(missing_ok=True)
        self.attachments = {name: folder / entry["file"] for name, entry in attached.items()}
        return folder

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, embedder: Mapping[str, Any] | None = None) -> VectorIndex:
        """Read and verify an index; with ``embedder`` (a describe() dict) also check it built the index."""
        faiss = _faiss()
        folder = Path(directory)
        if not folder.is_dir():
            raise FileNotFoundError(f"no index directory at {folder}")
        manifest = _read_manifest(folder)
        if manifest.get("format") != FORMAT_VERSION:
            raise IndexCorruptError(f"{folder / MANIFEST}: unsupported format {manifest.get('format')!r}")
        files = manifest.get("files")
        if not isinstance(files, dict) or not {"index", "docstore"} <= set(files) <= {"index", "docstore", "bm25"}:
            raise IndexCorruptError(f"{folder / MANIFEST}: 'files' must name the index and the docstore (and bm25)")
        if ("bm25" in files) != isinstance(manifest.get("hybrid"), dict):
            raise IndexCorruptError(f"{folder / MANIFEST}: a BM25 file and the hybrid settings come together")
        for key, name in files.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ".." in name:
                raise IndexCorruptError(f"{folder / MANIFEST}: file name {name!r} would leave the index directory")
            path = folder / name
            if not path.is_file():
                raise IndexCorruptError(f"{path} is missing (the {key} of this index)")
            if file_sha256(path, memoise=False) != manifest.get("sha256", {}).get(key):
                raise IndexCorruptError(f"{path} does not match its checksum: truncated or modified")
        attachments = _verified_attachments(folder, manifest)
        check_compatible(manifest.get("embedder"), embedder)
        precision = str(manifest.get("precision", "float32"))  # indexes saved before precisions existed: float32
        if precision not in INDEX_PRECISIONS:
            raise IndexCorruptError(f"{folder / MANIFEST}: unknown precision {precision!r}")
        try:
            docstore = json.loads((folder / files["docstore"]).read_text(encoding="utf-8"))
            raw = np.frombuffer((folder / files["index"]).read_bytes(), dtype=np.uint8)
            index = (faiss.deserialize_index_binary if precision == "binary" else faiss.deserialize_index)(raw)
        except (ValueError, RuntimeError) as exc:
            raise IndexCorruptError(f"{folder}: unreadable index data ({exc})") from exc
        try:
            hybrid = HybridConfig.parse(manifest.get("hybrid"))
        except (ValueError, TypeError) as exc:
            raise IndexCorruptError(f"{folder / MANIFEST}: hybrid settings are not valid ({exc})") from exc
        chunking = manifest.get("chunking")  # absent from indexes saved before it was recorded
        if chunking is not None and not isinstance(chunking, dict):
            raise IndexCorruptError(f"{folder / MANIFEST}: 'chunking' must be an object; got {chunking!r}")
        self = cls(
            int(manifest["dim"]),
            factory=str(manifest["factory"]),
            embedder=manifest.get("embedder"),
            precision=precision,
            hybrid=hybrid,
            chunking=chunking,
        )
        self.attachments = attachments
        if "bm25" in files:
            self.lexical = BM25Store.from_bytes(
                (folder / files["bm25"]).read_bytes(), where=str(folder / files["bm25"])
            )
        if index.d != self.dim:
            raise IndexCorruptError(f"{folder}: FAISS index has dim {index.d}, manifest says {self.dim}")
        self._faiss = index
        for entry in docstore.get("records", []):
            record = Record(str(entry["id"]), entry.get("text"), dict(entry.get("metadata") or {}))
            self._records[int(entry["label"])] = record
            self._label_of[record.id] = int(entry["label"])
            further = entry.get("further")
            if further is not None:
                if not isinstance(further, list) or not all(isinstance(x, int) for x in further):
                    raise IndexCorruptError(f"{folder}: record {record.id!r} has malformed 'further' labels")
                self._further[int(entry["label"])] = list(further)
                self._owner.update(dict.fromkeys(further, int(entry["label"])))
        self._tombstones = {int(label) for label in docstore.get("tombstones", [])}
        self._next_label = int(manifest.get("next_label", max(self._records, default=-1) + 1))
        if len(self._owner) != sum(map(len, self._further.values())) or set(self._owner) & set(self._records):
            raise IndexCorruptError(f"{folder}: the docstore's vector labels overlap: the files do not belong together")
        expected = len(self._records) + len(self._owner) + len(self._tombstones)
        if index.ntotal != expected or len(self._records) != manifest.get("count"):
            raise IndexCorruptError(
                f"{folder}: the FAISS index holds {index.ntotal} vectors but the docstore accounts for {expected} "
                f"(manifest count {manifest.get('count')}): the files do not belong together"
            )
        if self.lexical is not None and self.lexical.labels != set(self._records):
            raise IndexCorruptError(
                f"{folder / files['bm25']}: the BM25 store holds {len(self.lexical)} records, the docstore "
                f"{len(self._records)}, and they are not the same ones: the files do not belong together; "
                "rebuild the index (or re-save it from a store that loads)"
            )
        return self

    @property
    def is_trained(self) -> bool:
        """False for trainable factories (IVF, PQ) until :meth:`train` or the first :meth:`upsert`."""
        return bool(self._faiss.is_trained)

    def train(self, vectors: Any) -> None:
        """Train a trainable index (IVF, PQ) on ``vectors`` ``(n, dim)`` (normalised here); no-op once trained."""
        self._train_if_needed(self._check_vectors(vectors))

    # ------------------------------------------------------------------ helpers
    def _check_vectors(self, vectors: Any, what: str = "vector") -> np.ndarray:
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2 or (matrix.size and matrix.shape[1] != self.dim):
            raise ValueError(f"{what}s must have shape (n, {self.dim}); got {matrix.shape}")
        if matrix.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
        if bad.size:
            raise ValueError(f"{what} rows {bad[:10].tolist()} contain NaN or infinity")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        zero = np.flatnonzero(norms[:, 0] == 0)
        if zero.size:
            raise ValueError(f"{what} rows {zero[:10].tolist()} are all zeros (no direction for cosine)")
        return np.ascontiguousarray(matrix / norms, dtype=np.float32)

    def _train_if_needed(self, matrix: np.ndarray) -> None:
        if self._faiss.is_trained:
            return
        try:
            self._faiss.train(matrix)
        except RuntimeError as exc:
            raise ValueError(
                f"the {self.factory!r} index must be trained and {len(matrix)} vectors are not enough for it "
                f"({exc}); add a larger first batch or use factory='Flat'"
            ) from exc

    def _codes(self, matrix: np.ndarray) -> np.ndarray:
        """What FAISS stores for normalised float rows: the rows themselves, or packed sign bits."""
        return np.ascontiguousarray(quantize_embeddings(matrix, "ubinary")) if self.binary else matrix

    def _scores(self, scores: np.ndarray) -> np.ndarray:
        """FAISS's raw results as similarities: Hamming distances become ``1 - 2·hamming/dim``."""
        return 1.0 - 2.0 * scores.astype(np.float32) / self.dim if self.binary else scores

    def _reconstruct(self, labels: Sequence[int], *, raw: bool = False) -> np.ndarray:
        """Stored rows as floats (binary: ±1/√dim sign vectors), or with ``raw`` the codes FAISS holds."""
        if not labels:
            if self.binary:
                return np.zeros((0, self.dim // 8), np.uint8) if raw else np.zeros((0, self.dim), np.float32)
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.binary:  # FAISS's binary indexes reconstruct one id at a time only
            rows = np.stack([self._faiss.reconstruct(int(label)) for label in labels])
        else:  # one call: ~20x faster than a Python loop over ids (hybrid search rescores ~100 candidates per query)
            rows = self._faiss.reconstruct_batch(np.asarray(labels, dtype=np.int64))
        if self.binary:
            return rows.astype(np.uint8) if raw else unpack_binary(rows.astype(np.uint8), self.dim)
        return rows.astype(np.float32)

    def _vector_labels(self, labels: Sequence[int]) -> list[int]:
        """The FAISS labels of records ``labels``: each record's own, then its further vectors'."""
        if not self._further:
            return list(labels)
        return [row for label in labels for row in (label, *self._further.get(label, ()))]

    def _record_scores(self, labels: Sequence[int], queries: np.ndarray) -> np.ndarray:
        """``(q, m)`` cosine of each query with each record of ``labels``: the best of a record's vectors."""
        rows = self._vector_labels(labels)
        similarity = queries @ self._reconstruct(rows).T  # (q, rows)
        if len(rows) == len(labels):
            return similarity
        sizes = [1 + len(self._further.get(label, ())) for label in labels]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return np.maximum.reduceat(similarity, starts, axis=1)  # (q, m)

    def _hit(self, label: int, score: float) -> Hit:
        record = self._records[label]
        return Hit(record.id, score, record.text, dict(record.metadata))

    def _hits(self, scores: np.ndarray, labels: np.ndarray) -> list[Hit]:
        """FAISS's rows as record hits, best first; a record's further vectors count once (its best)."""
        hits: list[Hit] = []
        seen: set[int] = set()
        for score, row in zip(scores, labels, strict=True):
            label = self._owner.get(int(row), int(row))
            if row >= 0 and label in self._records and label not in seen:
                seen.add(label)
                hits.append(self._hit(label, float(score)))
        return hits


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise IndexCorruptError(f"{folder} has no {MANIFEST}: not a kvembed-rag index (or its save never finished)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise IndexCorruptError(f"{path} must hold a JSON object")
    return manifest


def _sq8_factory(factory: str) -> str:
    """The scalar-quantised version of a float factory string (``Flat`` -> ``SQ8``, ``HNSW32`` -> ``HNSW32,SQ8``)."""
    if "SQ" in factory.upper():
        return factory
    if factory == "Flat":
        return "SQ8"
    if factory.endswith(",Flat"):
        return factory.removesuffix(",Flat") + ",SQ8"
    if factory.upper().startswith("HNSW") and "," not in factory:
        return f"{factory},SQ8"
    raise ValueError(f"cannot derive an int8 (SQ8) index from factory {factory!r}; pass a factory containing SQ8")


def _binary_factory(factory: str) -> str:
    """FAISS's binary factory string for ours (``Flat`` -> ``BFlat``, ``HNSW32`` -> ``BHNSW32``, ``IVF256,Flat``
    -> ``BIVF256``); strings already starting with ``B`` pass through."""
    if factory.startswith("B"):
        return factory
    if factory == "Flat":
        return "BFlat"
    if factory.upper().startswith("HNSW") and "," not in factory:
        return f"B{factory}"
    if factory.upper().startswith("IVF") and factory.endswith(",Flat"):
        return "B" + factory.removesuffix(",Flat")
    raise ValueError(f"no binary FAISS index for factory {factory!r}; use 'Flat', 'HNSW<M>' or 'IVF<n>,Flat'")
