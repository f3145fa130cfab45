"""Readers for evaluation data formats."""

from __future__ import annotations

import csv
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
