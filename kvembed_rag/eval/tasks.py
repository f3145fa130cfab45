"""Readers for evaluation data formats."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class StsPairs:
    first: list[str]
    second: list[str]
    scores: np.ndarray


def _pick(count: int, limit: int | None, sample: bool, seed: int) -> list[int]:
    """Indices to keep: the first ``limit``, or with ``sample`` a seeded random ``limit`` in file order."""
    if limit is None or limit >= count:
        return list(range(count))
    if sample:
        return sorted(random.Random(seed).sample(range(count), limit))
    return list(range(limit))


def load_sts(path: str | Path, limit: int | None = None, *, sample: bool = False, seed: int = 0) -> StsPairs:
    """TSV with header ``sentence1<TAB>sentence2<TAB>score``; ``limit`` keeps the first N pairs, or with
    ``sample`` a seeded random N (dev files are often sorted by genre, so the first N can mislead)."""
    first: list[str] = []
    second: list[str] = []
    scores: list[float] = []
    with Path(path).open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or len(header) < 3:
            raise ValueError(f"{path}: expected a header 'sentence1<TAB>sentence2<TAB>score'")
        for line, row in enumerate(reader, start=2):
            if len(row) < 3:
                raise ValueError(f"{path}:{line}: expected 3 tab-separated fields, got {len(row)}")
            first.append(row[0])
            second.append(row[1])
            scores.append(float(row[2]))
            if limit is not None and not sample and len(scores) >= limit:
                break
    keep = _pick(len(scores), limit, sample, seed)
    return StsPairs([first[i] for i in keep], [second[i] for i in keep], np.asarray([scores[i] for i in keep]))


@dataclass
class BeirTask:
    """A BEIR folder: corpus (id -> title + text), queries (id -> text), qrels (query -> doc -> gain)."""

    corpus: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, float]]

    def document_texts(self) -> tuple[list[str], list[str]]:
        """Ids and the texts to embed (title and body, as BEIR does)."""
        ids = list(self.corpus)
        return ids, [f"{title}\n{text}".strip() if title else text for title, text in self.corpus.values()]

    def limited(
        self, query_limit: int | None = None, corpus_limit: int | None = None, seed: int = 0, *, sample: bool = False
    ) -> BeirTask:
        """The first ``query_limit`` judged queries (with ``sample``, a seeded random set of that many) and, with
        ``corpus_limit``, every document they judge plus a seeded random sample of the rest (a smaller, easier
        haystack: say so when reporting)."""
        judged = [qid for qid in self.queries if qid in self.qrels]
        judged = [judged[i] for i in _pick(len(judged), query_limit, sample, seed)]
        queries = {qid: self.queries[qid] for qid in judged}
        qrels = {qid: self.qrels[qid] for qid in judged}
        corpus = self.corpus
        if corpus_limit is not None and corpus_limit < len(corpus):
            needed = {doc for judged_docs in qrels.values() for doc in judged_docs if doc in corpus}
            others = sorted(set(corpus) - needed)
            random.Random(seed).shuffle(others)
            keep = needed | set(others[: max(0, corpus_limit - len(needed))])
            corpus = {doc: value for doc, value in corpus.items() if doc in keep}
        return BeirTask(corpus, queries, qrels)

    def sample_documents(self, count: int | None, seed: int = 0) -> BeirTask:
        """A seeded sample of ``count`` documents and only the judged queries answered entirely inside it.

        The protocol for long-document corpora, where documents cost far more than queries: fewer documents,
        every query they answer (unlike :meth:`limited`, which picks queries first).
        """
        if count is None or count >= len(self.corpus):
            return self
        ids = sorted(self.corpus)
        keep = set(random.Random(seed).sample(ids, count))
        qrels = {
            qid: judged
            for qid, judged in self.qrels.items()
            if qid in self.queries
            and {d for d, gain in judged.items() if gain > 0} <= keep
            and any(gain > 0 for gain in judged.values())
        }
        return BeirTask(
            {doc: value for doc, value in self.corpus.items() if doc in keep},
            {qid: text for qid, text in self.queries.items() if qid in qrels},
            qrels,
        )


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from exc
    return rows


def load_beir(
    folder: str | Path,
    split: str = "dev",
    *,
    query_limit: int | None = None,
    corpus_limit: int | None = None,
    seed: int = 0,
    sample: bool = False,
) -> BeirTask:
    """Read a BEIR folder. Limits keep the first ``query_limit`` judged queries (``sample``: a seeded random
    set of that many) and, with ``corpus_limit``,
    every document they judge plus a seeded random sample of the rest (a smaller, easier haystack: say so
    when reporting)."""
    root = Path(folder)
    qrels_path = root / "qrels" / f"{split}.tsv"
    for required in (root / "corpus.jsonl", root / "queries.jsonl", qrels_path):
        if not required.is_file():
            raise FileNotFoundError(f"{required} is missing: not a BEIR folder with a {split!r} split")
    qrels: dict[str, dict[str, float]] = {}
    with qrels_path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if len(row) < 3:
                continue
            try:
                gain = float(row[2])
            except ValueError:
                if number == 1:
                    continue  # the header: query-id, corpus-id, score
                raise ValueError(f"{qrels_path}:{number}: score {row[2]!r} is not a number") from None
            qrels.setdefault(row[0], {})[row[1]] = gain
    queries = {str(row["_id"]): str(row["text"]) for row in _jsonl(root / "queries.jsonl")}
    corpus = {
        str(row["_id"]): (str(row.get("title") or ""), str(row.get("text") or ""))
        for row in _jsonl(root / "corpus.jsonl")
    }
    return BeirTask(corpus, queries, qrels).limited(query_limit, corpus_limit, seed, sample=sample)


@dataclass
class LabelledTexts:
    """Texts with string labels (classification and clustering)."""

    texts: list[str]
    labels: list[str]


def _read_labelled(path: Path) -> LabelledTexts:
    """``text<TAB>label`` (.tsv, optional header) or CSV with ``text`` and ``label``/``category`` columns."""
    texts: list[str] = []
    labels: list[str] = []
    with path.open(encoding="utf-8", newline="") as handle:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            label_field = next((f for f in ("label", "category", "intent") if f in fields), None)
            if "text" not in fields or label_field is None:
                raise ValueError(f"{path}: a CSV needs a 'text' column and a 'label' (or 'category') column")
            for row in reader:
                texts.append(row["text"])
                labels.append(row[label_field])
        else:
            for number, cells in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
                if not cells or (number == 1 and [c.lower() for c in cells[:2]] == ["text", "label"]):
                    continue
                if len(cells) < 2:
                    raise ValueError(f"{path}:{number}: expected 'text<TAB>label', got {len(cells)} field(s)")
                texts.append(cells[0])
                labels.append(cells[1])
    if not texts:
        raise ValueError(f"{path}: no labelled texts")
    return LabelledTexts(texts, labels)


def _labelled_file(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{ext}" for ext in (".tsv", ".csv") if (folder / f"{stem}{ext}").is_file()), None)


def _sample(data: LabelledTexts, limit: int | None, seed: int) -> LabelledTexts:
    if limit is None or limit >= len(data.texts):
        return data
    keep = _pick(len(data.texts), limit, True, seed)
    return LabelledTexts([data.texts[i] for i in keep], [data.labels[i] for i in keep])


def load_classification(
    path: str | Path, *, limit: int | None = None, test_fraction: float = 0.25, seed: int = 0
) -> tuple[LabelledTexts, LabelledTexts, str]:
    """Train and test sets, and how they were obtained.

    A folder with ``train.tsv`` and ``test.tsv`` (or ``.csv``) is used as given. A folder with only a train
    file, or a single file, is split per label with a seeded shuffle (``test_fraction`` of each label to test).
    ``limit`` caps each side at a seeded sample of that many texts.
    """
    root = Path(path)
    if root.is_dir():
        train_file, test_file = _labelled_file(root, "train"), _labelled_file(root, "test")
        if train_file is None:
            raise FileNotFoundError(f"{root}: no train.tsv or train.csv ('text<TAB>label' per line)")
    elif root.is_file():
        train_file, test_file = root, None
    else:
        raise FileNotFoundError(f"{root}: no such file or folder")
    train = _read_labelled(train_file)
    if test_file is not None:
        test, how = _read_labelled(test_file), "given train/test"
    else:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be between 0 and 1; got {test_fraction}")
        by_label: dict[str, list[int]] = {}
        for i, label in enumerate(train.labels):
            by_label.setdefault(label, []).append(i)
        rng = random.Random(seed)
        test_ids: set[int] = set()
        for members in by_label.values():
            rng.shuffle(members)
            test_ids.update(members[: max(1, round(len(members) * test_fraction))] if len(members) > 1 else [])
        pick = lambda ids: LabelledTexts([train.texts[i] for i in ids], [train.labels[i] for i in ids])  # noqa: E731
        test = pick(sorted(test_ids))
        train = pick([i for i in range(len(train.texts)) if i not in test_ids])
        how = f"{train_file.name} split {1 - test_fraction:.0%}/{test_fraction:.0%} per label (seed {seed})"
    return _sample(train, limit, seed), _sample(test, limit, seed + 1), how


def load_clustering(path: str | Path, *, limit: int | None = None, seed: int = 0) -> LabelledTexts:
    """``text<TAB>label`` TSV (or CSV with text and label columns); ``limit`` keeps a seeded sample."""
    file = Path(path)
    if file.is_dir():
        found = next((f for stem in ("test", "data", "train") if (f := _labelled_file(file, stem))), None)
        if found is None:
            raise FileNotFoundError(f"{file}: no test/data/train .tsv or .csv inside")
        file = found
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    return _sample(_read_labelled(file), limit, seed)


def _rows(path: Path) -> list[dict[str, object]]:
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or convert to JSONL"
            ) from exc
        return list(pq.read_table(path).to_pylist())
    return _jsonl(path)


def _find(root: Path, stem: str) -> Path | None:
    for ext in (".jsonl", ".parquet"):
        for candidate in (root / f"{stem}{ext}", *sorted(root.glob(f"*{stem}*{ext}"))):
            if candidate.is_file():
                return candidate
    return None


def load_loco(
    path: str | Path,
    *,
    split: str = "dev",
    query_limit: int | None = None,
    corpus_limit: int | None = None,
    seed: int = 0,
) -> dict[str, BeirTask]:
    """Long-document retrieval tasks by dataset name.

    ``path`` is either a BEIR folder (one dataset, named after the folder) or a local copy of LoCoV1 in its
    published schema: ``queries`` rows ``{qid, query, answer_pids, dataset}`` and ``documents`` rows
    ``{pid, passage, dataset}`` as JSONL or Parquet files whose names contain ``queries`` and ``documents``.
    Limits apply per dataset, as in :func:`load_beir`.
    """
    root = Path(path)
    if (root / "corpus.jsonl").is_file():
        return {root.name: load_beir(root, split, query_limit=query_limit, corpus_limit=corpus_limit, seed=seed)}
    queries_file, documents_file = _find(root, "queries"), _find(root, "documents")
    if queries_file is None or documents_file is None:
        raise FileNotFoundError(
            f"{root}: neither a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) nor LoCoV1 files "
            "(*queries*.jsonl|parquet with qid/query/answer_pids/dataset, *documents*.jsonl|parquet with "
            "pid/passage/dataset)"
        )
    tasks: dict[str, BeirTask] = {}
    for row in _rows(documents_file):
        missing = {"pid", "passage", "dataset"} - set(row)
        if missing:
            raise ValueError(f"{documents_file}: document row lacks {sorted(missing)}")
        task = tasks.setdefault(str(row["dataset"]), BeirTask({}, {}, {}))
        task.corpus[str(row["pid"])] = ("", str(row["passage"]))
    for row in _rows(queries_file):
        missing = {"qid", "query", "answer_pids", "dataset"} - set(row)
        if missing:
            raise ValueError(f"{queries_file}: query row lacks {sorted(missing)}")
        name = str(row["dataset"])
        if name not in tasks:
            raise ValueError(f"{queries_file}: query {row['qid']} names dataset {name!r}, which has no documents")
        answers = row["answer_pids"]
        pids = [answers] if isinstance(answers, str) else list(answers)  # type: ignore[call-overload]
        qid = str(row["qid"])
        tasks[name].queries[qid] = str(row["query"])
        tasks[name].qrels[qid] = {str(pid): 1.0 for pid in pids}
    return {name: task.limited(query_limit, corpus_limit, seed) for name, task in sorted(tasks.items())}
