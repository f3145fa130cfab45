"""BM25 beside the dense index, and the fusion of the two rankings (hybrid retrieval).

Why: on long meeting transcripts split into passages, BM25 finds the answering passage more often than
dense kv vectors alone (docs/RESULTS.md, "Passage-level retrieval"); a RAG user wants both. BM25 scoring is
`bm25s <https://github.com/xhluca/bm25s>`_'s (a maintained library: numpy + scipy only); tokenisation is ours
and fixed (lower-cased ``\\w\\w+`` words minus bm25s's English stop words), so an index scores the same on any
machine.

:class:`BM25Store` keeps one token list per record, keyed by the dense index's integer labels, so upserts and
deletes follow the dense index; the bm25s model is rebuilt lazily after a change (cheap: a sparse matrix).
On disk it is one ``.npz`` of plain arrays (read with ``allow_pickle=False``: nothing executes when it is read),
named in the dense index's manifest with its sha256; see :mod:`kvembed_rag.retrieval.vector_index`.

Fusion (:func:`fuse`) runs over a candidate set: the union of the dense top-``candidates`` and the BM25
top-``candidates``, each candidate scored by both (the dense score exactly). ``weight`` is BM25's share:

- ``"rrf"``: reciprocal rank fusion, ``(1 - w)/(60 + rank_dense) + w/(60 + rank_bm25)`` (ranks among the
  candidates, from 1);
- ``"weighted"``: ``(1 - w)·dense + w·bm25``, each min-max normalised over the candidates.

Without feedback and document prior, ``weight=0`` orders exactly as the dense search does, ``weight=1`` as BM25
does.

Pseudo-relevance feedback (``feedback=N``, Rocchio 1971): the fused ranking's top ``N`` passages move the dense
query towards their mean direction (:func:`feedback_query`), a second dense search runs from there, and its
candidates are fused with BM25's again. No forward pass: the moved query is built from stored vectors.

Document prior (``document_prior=W``): passages of one long document (the index's ``document`` metadata, the
LangChain store's ``parent_id``, LlamaIndex's ``ref_doc_id``) rise together by ``W`` times their document's best
fused score (:func:`with_document_prior`); a question is usually about one document, and its best passage is
evidence for that document's other passages.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, IndexCorruptError

#: fusion methods :func:`fuse` knows
FUSION_METHODS = ("rrf", "weighted")
#: the RRF constant (Cormack et al. 2009): damps the difference between the first few ranks
RRF_K = 60
_WORD = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's and bm25s's default token pattern
_FORMAT = 1


def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError as exc:  # a core dependency; only a broken install lands here
        raise ImportError("hybrid retrieval needs bm25s: pip install 'bm25s>=0.3.16'") from exc
    return bm25s


def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def tokenize(text: str, stopwords: frozenset[str] | None = None) -> list[str]:
    """Lower-cased words of two or more characters, English stop words removed."""
    stop = _stopwords() if stopwords is None else stopwords
    return [word for word in _WORD.findall(text.lower()) if word not in stop]


@dataclass(frozen=True)
class HybridConfig:
    """How dense and BM25 rankings are fused (:func:`fuse`); ``weight`` is BM25's share, 0 to 1."""

    # the default is the best on QMSum passages, dev sample A (4 meetings, 30 questions; weighted 0.3-0.5 and
    # RRF 0.5-0.7 within 0.005 nDCG@10 of it), confirmed on 12 other meetings and re-checked for the middle
    # window (0.4 within 0.003 on A, level on B+C+D) and at 2,048-token passages (0.7 better on nDCG, worse on
    # answer coverage): docs/RESULTS.md, "Passage retrieval on twelve confirming meetings" and later sections
    fusion: str = "weighted"
    weight: float = 0.5
    candidates: int = 100  # each side's top-N that enters the fusion (at least k)
    # the fused top-N fed back into the dense query (Rocchio; 0: off) and their mean direction's weight against the
    # query's own: on QMSum passages +0.011 nDCG@10 over no feedback on the dev pool (C8-L8), +0.011 and +0.013 on
    # two later pools, +0.020 on four samples kept for the confirmation (U8-X8); docs/RESULTS.md, "Pseudo-relevance"
    feedback: int = 5
    feedback_weight: float = 1.0
    # each candidate's score plus this weight times its document's best candidate score (min-max over the top
    # ``candidates``; records without a document are their own, whose order it cannot change): +0.016 nDCG@10 on
    # 625 fresh QMSum questions in pools of 32 meetings, +0.010 in pools of 8; docs/RESULTS.md, "A document prior"
    document_prior: float = 0.5

    def __post_init__(self) -> None:
        if self.fusion not in FUSION_METHODS:
            raise ConfigError(f"fusion must be one of {FUSION_METHODS}; got {self.fusion!r}")
        if isinstance(self.weight, bool) or not 0.0 <= float(self.weight) <= 1.0:
            raise ConfigError(f"hybrid weight is BM25's share and must be between 0 and 1; got {self.weight!r}")
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or self.candidates < 1:
            raise ConfigError(f"candidates must be a positive int; got {self.candidates!r}")
        if isinstance(self.feedback, bool) or not isinstance(self.feedback, int) or self.feedback < 0:
            raise ConfigError(f"feedback is how many fused top passages feed back (0: off); got {self.feedback!r}")
        if isinstance(self.feedback_weight, bool) or not float(self.feedback_weight) >= 0.0:
            raise ConfigError(f"feedback_weight must be a number >= 0; got {self.feedback_weight!r}")
        if isinstance(self.document_prior, bool) or not 0.0 <= float(self.document_prior) < float("inf"):
            raise ConfigError(f"document_prior must be a number >= 0 (0: off); got {self.document_prior!r}")

    @classmethod
    def parse(cls, value: HybridConfig | Mapping[str, Any] | str | bool | None) -> HybridConfig | None:
        """``None``/``False``: no hybrid; ``True``: the defaults; ``"rrf"``, ``"weighted:0.3"``,
        ``"weighted:0.5+feedback:5+document:0.5"`` (``+feedback:0``, ``+document:0``: off), a dict, a config."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, HybridConfig):
            return value
        if isinstance(value, Mapping):
            return cls(**dict(value))
        if isinstance(value, str):
            usage = (
                "write METHOD[:WEIGHT][+feedback:N][+document:W], e.g. 'rrf', 'weighted:0.3' or "
                "'weighted:0.5+feedback:5+document:0.5'"
            )
            head, *options = value.split("+")
            extra: dict[str, Any] = {}
            seen: set[str] = set()
            for option in options:
                key, _, amount = option.partition(":")
                key = key.strip()
                if key in seen or key not in ("feedback", "document"):
                    raise ConfigError(f"hybrid {value!r}: {usage}")
                seen.add(key)
                if key == "feedback":
                    if not amount.strip().isdigit():
                        raise ConfigError(f"hybrid {value!r}: {usage}")
                    extra["feedback"] = int(amount)
                else:
                    try:
                        extra["document_prior"] = float(amount)
                    except ValueError:
                        raise ConfigError(f"hybrid {value!r}: {usage}") from None
            name, _, weight = head.partition(":")
            if not weight:
                return cls(name.strip(), **extra)
            try:
                share = float(weight)
            except ValueError:
                raise ConfigError(f"hybrid {value!r}: {usage}") from None
            return cls(name.strip(), share, **extra)
        raise ConfigError(f"hybrid must be a bool, 'METHOD[:WEIGHT]', a dict or a HybridConfig; got {value!r}")

    def label(self) -> str:
        """The string :meth:`parse` reads back (``candidates`` and ``feedback_weight`` aside)."""
        return f"{self.fusion}:{self.weight:g}+feedback:{self.feedback}+document:{self.document_prior:g}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks, best (highest) first; ties keep candidate order."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


def _minmax(scores: np.ndarray) -> np.ndarray:
    spread = float(scores.max() - scores.min()) if len(scores) else 0.0
    return (scores - scores.min()) / spread if spread > 0 else np.zeros_like(scores)


def fuse(dense: np.ndarray, lexical: np.ndarray, *, fusion: str = "rrf", weight: float = 0.5) -> np.ndarray:
    """Fused scores ``(m,)`` of ``m`` candidates from their dense and BM25 scores (see the module docstring)."""
    d, b = np.asarray(dense, dtype=np.float64), np.asarray(lexical, dtype=np.float64)
    if d.shape != b.shape or d.ndim != 1:
        raise ValueError(f"dense and lexical scores must be equally long 1-D arrays; got {d.shape} and {b.shape}")
    if fusion == "rrf":
        return (1.0 - weight) / (RRF_K + _ranks(d)) + weight / (RRF_K + _ranks(b))
    if fusion == "weighted":
        return (1.0 - weight) * _minmax(d) + weight * _minmax(b)
    raise ConfigError(f"fusion must be one of {FUSION_METHODS}; got {fusion!r}")


def feedback_query(query: np.ndarray, passages: np.ndarray, weight: float) -> np.ndarray:
    """The unit query ``(dim,)`` moved towards the mean direction of fed-back ``passages`` ``(n, dim)`` (Rocchio,
    positive side only): ``q/|q| + weight * mean(p/|p|)``, normalised. No passages: the query, normalised."""
    unit = np.asarray(query, dtype=np.float32) / max(float(np.linalg.norm(query)), 1e-12)
    if len(passages):
        rows = np.asarray(passages, dtype=np.float32)
        rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)  # (n, dim)
        unit = unit + weight * rows.mean(axis=0)
    return (unit / max(float(np.linalg.norm(unit)), 1e-12)).astype(np.float32)


def candidate_union(dense: np.ndarray, lexical: np.ndarray, count: int) -> np.ndarray:
    """Positions of the union of the ``count`` best by each score (dense first, then BM25's additions)."""
    top_dense = np.argsort(-dense, kind="stable")[:count]
    top_lexical = np.argsort(-lexical, kind="stable")[:count]
    seen = set(top_dense.tolist())
    return np.concatenate([top_dense, np.asarray([i for i in top_lexical.tolist() if i not in seen], dtype=np.int64)])


def with_document_prior(
    fused: np.ndarray, documents: Sequence[Hashable], config: HybridConfig, count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, scores)``: the fused top ``count`` (default ``config.candidates``; positions into ``fused``),
    each score raised by ``config.document_prior`` (W) times its document's best fused score among them, min-max
    normalised over them, and divided by ``1 + W``.

    Passages of a document that has a strong passage move up together; a record that is its own document gains in
    step with its own score, so among such records the order stays the fused one."""
    top = np.argsort(-fused, kind="stable")[: count or config.candidates]  # (m,)
    scores = fused[top].astype(np.float64)
    if not config.document_prior or len(top) == 0:
        return top, scores
    best: dict[Hashable, float] = {}
    for position, score in zip(top.tolist(), scores.tolist(), strict=True):
        best[documents[position]] = max(best.get(documents[position], -np.inf), score)
    prior = np.asarray([best[documents[position]] for position in top.tolist()])  # (m,)
    # divided by 1 + W: a weighted fusion's scores stay within [0, 1] (relevance scores downstream expect it)
    return top, (scores + config.document_prior * _minmax(prior)) / (1.0 + config.document_prior)


def hybrid_order(
    dense: np.ndarray,
    lexical: np.ndarray,
    config: HybridConfig,
    k: int,
    documents: Sequence[Hashable] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` positions and their fused scores, given every item's dense and BM25 score (the evaluation's
    path; :meth:`VectorIndex.search_hybrid` fuses the same candidate set). ``documents`` (each item's document):
    add the document prior (:func:`with_document_prior`)."""
    candidates = candidate_union(dense, lexical, max(config.candidates, k))
    fused = fuse(dense[candidates], lexical[candidates], fusion=config.fusion, weight=config.weight)
    if documents is not None:
        top, fused = with_document_prior(
            fused, [documents[i] for i in candidates.tolist()], config, max(config.candidates, k)
        )
        candidates = candidates[top]
    order = np.argsort(-fused, kind="stable")[:k]
    return candidates[order], fused[order]


#: bm25s's scoring variants :class:`BM25Params` accepts
BM25_METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


@dataclass(frozen=True)
class BM25Params:
    """BM25's parameters and the tokenizer's name, stored with the index (an index keeps the ones it was built with).

    The defaults are the best of 36 (variant x k1 x b) for the shipped hybrid on 2,048-token QMSum passages (dev
    meetings 16-95), confirmed on 96-191 (+0.005 nDCG@10, every pool up) and level on SciFact abstracts (-0.004):
    docs/RESULTS.md, "BM25's parameters at 2,048-token passages". Long passages want term counts to saturate later
    (k1 2.0) and length to count less (b 0.5) than the textbook 1.2 / 0.75, which :data:`REFERENCE_BM25` keeps."""

    k1: float = 2.0
    b: float = 0.5
    method: str = "lucene"
    tokenizer: str = "words2-lower-stopwords_en"

    def __post_init__(self) -> None:
        if not (isinstance(self.k1, int | float) and self.k1 >= 0):
            raise ConfigError(f"BM25 k1 must be a number >= 0; got {self.k1!r}")
        if not (isinstance(self.b, int | float) and 0 <= self.b <= 1):
            raise ConfigError(f"BM25 b must be between 0 and 1; got {self.b!r}")
        if self.method not in BM25_METHODS:
            raise ConfigError(f"BM25 method must be one of {BM25_METHODS}; got {self.method!r}")

    @classmethod
    def parse(cls, text: str | BM25Params | None) -> BM25Params:
        """``"k1=2,b=0.5"`` (any of ``k1``, ``b``, ``method``; the others default), a :class:`BM25Params` or None."""
        if text is None:
            return cls()
        if isinstance(text, BM25Params):
            return text
        fields: dict[str, Any] = {}
        for part in (p.strip() for p in str(text).split(",") if p.strip()):
            name, sep, value = part.partition("=")
            name = name.strip().lower()
            if not sep or name not in ("k1", "b", "method"):
                raise ConfigError(f"BM25 parameters look like 'k1=2,b=0.5[,method=lucene]'; got {text!r}")
            try:
                fields[name] = value.strip() if name == "method" else float(value)
            except ValueError:
                raise ConfigError(f"BM25 {name} must be a number; got {value.strip()!r}") from None
        return cls(**fields)

    def label(self) -> str:
        """``k1=2,b=0.5`` (``,method=...`` when not Lucene): :meth:`parse`'s input."""
        text = f"k1={self.k1:g},b={self.b:g}"
        return text if self.method == "lucene" else f"{text},method={self.method}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BM25Params:
        try:
            params = cls(float(data["k1"]), float(data["b"]), str(data["method"]), str(data["tokenizer"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexCorruptError(f"BM25 parameters {dict(data)!r} are not valid ({exc})") from exc
        if params.tokenizer != cls.tokenizer:
            raise IndexCorruptError(
                f"the BM25 index was tokenised with {params.tokenizer!r}, which this version does not know; rebuild it"
            )
        return params


#: the textbook parameters (Robertson / Lucene defaults): the reference row of ``eval passages``, as issue 30 set it
REFERENCE_BM25 = BM25Params(k1=1.2, b=0.75)


class BM25Store:
    """BM25 over records keyed by integer labels (the dense index's), with upsert, delete and ``.npz`` storage."""

    def __init__(self, params: BM25Params | None = None) -> None:
        self.params = params or BM25Params()
        self._tokens: dict[int, list[str]] = {}
        self._model: Any = None
        self._labels = np.zeros(0, dtype=np.int64)  # the model's document order
        self._stop = _stopwords()

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def labels(self) -> set[int]:
        return set(self._tokens)

    def upsert(self, labels: Sequence[int], texts: Sequence[str]) -> None:
        if len(labels) != len(texts):
            raise ValueError(f"got {len(labels)} labels for {len(texts)} texts")
        for label, text in zip(labels, texts, strict=True):
            if not isinstance(text, str):
                raise TypeError(f"hybrid retrieval indexes texts: record {label} has {type(text).__name__}")
            self._tokens[int(label)] = tokenize(text, self._stop)
        self._model = None

    def set_params(self, params: BM25Params) -> None:
        """Score with other parameters from now on (the token lists stay; the model is rebuilt when next used)."""
        self.params = params
        self._model = None

    def delete(self, labels: Iterable[int]) -> None:
        for label in labels:
            self._tokens.pop(int(label), None)
        self._model = None

    def _ensure(self) -> None:
        if self._model is not None or not self._tokens:
            return
        bm25s = _bm25s()
        self._labels = np.asarray(sorted(self._tokens), dtype=np.int64)
        model = bm25s.BM25(k1=self.params.k1, b=self.params.b, method=self.params.method)
        model.index([self._tokens[int(label)] for label in self._labels], show_progress=False)
        self._model = model

    def scores(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, scores)`` of every record for ``query`` (zeros when no query word is indexed)."""
        self._ensure()
        if self._model is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        words = [w for w in tokenize(query, self._stop) if w in self._model.vocab_dict]
        if not words:
            return self._labels, np.zeros(len(self._labels), np.float32)
        return self._labels, np.asarray(self._model.get_scores(words), dtype=np.float32)

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        """The store as an ``.npz`` of plain arrays: labels, token offsets, token ids and the vocabulary."""
        labels = np.asarray(sorted(self._tokens), dtype=np.int64)
        vocabulary: dict[str, int] = {}
        ids: list[int] = []
        offsets = [0]
        for label in labels.tolist():
            ids.extend(vocabulary.setdefault(word, len(vocabulary)) for word in self._tokens[label])
            offsets.append(len(ids))
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.asarray(_FORMAT, dtype=np.int64),
            params=np.asarray(json.dumps(asdict(self.params))),
            labels=labels,
            offsets=np.asarray(offsets, dtype=np.int64),
            tokens=np.asarray(ids, dtype=np.int32),
            vocabulary=np.asarray(list(vocabulary), dtype=str),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "BM25 index") -> BM25Store:
        """Read :meth:`to_bytes`'s output; :class:`IndexCorruptError` when it is not a consistent store."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                fields = {name: arrays[name] for name in arrays.files}
        except (OSError, ValueError, EOFError) as exc:
            raise IndexCorruptError(f"{where} is not a readable .npz ({exc})") from exc
        missing = {"format", "params", "labels", "offsets", "tokens", "vocabulary"} - set(fields)
        if missing:
            raise IndexCorruptError(f"{where} lacks {sorted(missing)}")
        if int(fields["format"]) != _FORMAT:
            raise IndexCorruptError(f"{where}: unsupported format {int(fields['format'])}")
        try:
            params = BM25Params.from_dict(json.loads(str(fields["params"])))
        except ValueError as exc:
            raise IndexCorruptError(f"{where}: parameters are not JSON ({exc})") from exc
        labels, offsets, tokens = fields["labels"], fields["offsets"], fields["tokens"]
        vocabulary = fields["vocabulary"].tolist()
        consistent = (
            labels.ndim == offsets.ndim == tokens.ndim == 1
            and len(offsets) == len(labels) + 1
            and (len(offsets) == 0 or (offsets[0] == 0 and offsets[-1] == len(tokens)))
            and bool(np.all(np.diff(offsets) >= 0))
            and (len(tokens) == 0 or (tokens.min() >= 0 and tokens.max() < len(vocabulary)))
            and len(set(labels.tolist())) == len(labels)
        )
        if not consistent:
            raise IndexCorruptError(f"{where}: labels, offsets, tokens and vocabulary do not add up")
        store = cls(params)
        for position, label in enumerate(labels.tolist()):
            store._tokens[int(label)] = [vocabulary[i] for i in tokens[offsets[position] : offsets[position + 1]]]
        return store
