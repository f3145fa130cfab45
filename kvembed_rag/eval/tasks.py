"""Readers for evaluation data formats."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class StsPairs:
    first: list[str]
    second: list[str]
    scores: np.ndarray


def load_sts(path: str | Path, limit: int | None = None) -> StsPairs:
    """TSV with header ``sentence1<TAB>sentence2<TAB>score``."""
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
            if limit is not None and len(scores) >= limit:
                break
    return StsPairs(first, second, np.asarray(scores))


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


def _jsonl(path: Path) -> list[dict[str, object]]:
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
) -> BeirTask:
    """Read a BEIR folder. Limits keep the first ``query_limit`` judged queries and, with ``corpus_limit``,
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
    all_queries = {str(row["_id"]): str(row["text"]) for row in _jsonl(root / "queries.jsonl")}
    judged = [qid for qid in all_queries if qid in qrels]
    if query_limit is not None:
        judged = judged[:query_limit]
    queries = {qid: all_queries[qid] for qid in judged}
    qrels = {qid: qrels[qid] for qid in judged}
    corpus = {
        str(row["_id"]): (str(row.get("title") or ""), str(row.get("text") or ""))
        for row in _jsonl(root / "corpus.jsonl")
    }
    if corpus_limit is not None and corpus_limit < len(corpus):
        needed = {doc for judged_docs in qrels.values() for doc in judged_docs if doc in corpus}
        others = sorted(set(corpus) - needed)
        random.Random(seed).shuffle(others)
        keep = needed | set(others[: max(0, corpus_limit - len(needed))])
        corpus = {doc: value for doc, value in corpus.items() if doc in keep}
    return BeirTask(corpus, queries, qrels)
