"""The offline demo: index Python's module documentation with an embedder, then answer questions.

The corpus is 19 ``pydoc`` pages (:data:`kvembed_rag.retrieval.documents.DEMO_MODULES`, about 82k Gemma tokens); each
question comes with the module pages that answer it, so the demo can say whether retrieval found them.
The index lives in the kvembed-rag cache (one per embedder and passage size) and is reused: a second run embeds nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .retrieval.documents import DEMO_MODULES, SourceDocument, stdlib_documents
from .retrieval.pipeline import BuildReport, DocumentHit, build_index, search_documents

#: tokens per input in the demo: caps the passages (``kvembed-rag index`` makes 2,048 text tokens) so that a
#: passage and its prompt fit; keeps the first run within minutes on 2 CPU cores
DEMO_MAX_LENGTH = 2048
#: padded tokens per forward pass in the demo: two 2,048-token passages, so progress moves every few seconds
#: on a CPU (the library default, 16,384, is one update per ~half a minute on 2 cores, for no speed gain)
DEMO_BATCH_TOKENS = 4096


@dataclass(frozen=True)
class DemoQuestion:
    question: str
    expected: tuple[str, ...]  # document ids that answer it


DEMO_QUESTIONS = (
    DemoQuestion("How do I parse a JSON string into Python objects?", ("stdlib:json",)),
    DemoQuestion(
        "Which module computes the median and standard deviation of a list of numbers?", ("stdlib:statistics",)
    ),
    DemoQuestion("How can I run a shell command and capture its output?", ("stdlib:subprocess",)),
    DemoQuestion("How do I compress a folder into a zip archive?", ("stdlib:zipfile", "stdlib:shutil")),
    DemoQuestion("How do I generate a random unique identifier?", ("stdlib:uuid",)),
    DemoQuestion("Which module parses command-line options and prints help?", ("stdlib:argparse",)),
)


@dataclass
class DemoAnswer:
    question: str
    hits: list[DocumentHit]
    seconds: float
    expected: tuple[str, ...] = ()

    @property
    def rank(self) -> int | None:
        """1-based rank of the first expected document among the hits (None: not found or no expectation)."""
        return next((i for i, h in enumerate(self.hits, start=1) if h.document in self.expected), None)


@dataclass
class DemoResult:
    out: Path
    documents: int
    report: BuildReport
    answers: list[DemoAnswer] = field(default_factory=list)

    @property
    def found(self) -> int:
        """Questions whose expected page is among the hits."""
        return sum(1 for a in self.answers if a.expected and a.rank is not None)


def demo_documents(limit: int | None = None) -> list[SourceDocument]:
    """The demo's pages (the first ``limit`` of them), normalised so their hashes are stable across runs."""
    return stdlib_documents(DEMO_MODULES[:limit] if limit else DEMO_MODULES)


def default_demo_dir(method: str) -> Path:
    from ._io import cache_root

    return cache_root() / "demo-index" / method


def run_demo(
    embedder: Any,
    out: str | Path,
    *,
    documents: Sequence[SourceDocument] | None = None,
    questions: Sequence[str] | None = None,
    k: int = 3,
    progress: Callable[[int, int, int], None] | None = None,
    overwrite: bool = False,
) -> DemoResult:
    """Index ``documents`` (default: :func:`demo_documents`) into ``out`` (reused) and answer ``questions``.

    Without ``questions`` the built-in ones are asked, each with the pages expected to answer it.
    ``progress`` is :func:`kvembed_rag.retrieval.pipeline.build_index`'s (called per embedder batch).
    """
    from .retrieval.vector_index import VectorIndex

    folder = Path(out)
    pages = list(documents) if documents is not None else demo_documents()
    # the shipped retrieval path, as `kvembed-rag index` builds it: dense kv and BM25 over the same passages, fused
    report = build_index(embedder, pages, folder, progress=progress, overwrite=overwrite, hybrid=True)
    index = VectorIndex.load(folder)
    asked = [DemoQuestion(q, ()) for q in questions] if questions else list(DEMO_QUESTIONS)
    result = DemoResult(folder, len(pages), report)
    for item in asked:
        start = time.perf_counter()
        hits = search_documents(index, embedder.encode_queries(item.question), k=k, query_text=item.question)
        result.answers.append(DemoAnswer(item.question, hits, time.perf_counter() - start, item.expected))
    return result


FACT = "The archive's spare key is kept in the blue tin under the third stair of the east tower."


def long_document(folder: Path, essays: int, paragraphs: int = 300) -> tuple[str, str]:
    """One document far longer than an embedder's window, and a question whose answer is on its last page:
    the first ``essays`` texts of ``folder`` joined (e.g. ../shared/data/paul_graham_essays), or, when the
    folder is absent, a generated report of ``paragraphs`` paragraphs with a planted fact near its end.
    Returns ``(text, question)``; the long-document examples and their tests use it."""
    files = sorted(folder.glob("*.txt"))[:essays] if folder.is_dir() else []
    if files:
        text = "\n\n".join(path.read_text(encoding="utf-8", errors="replace") for path in files)
        tail = text[-3000:]  # the last page: about 3,000 characters
        sentences = [s.strip() for s in tail.replace("\n", " ").split(". ") if len(s.split()) >= 8]
        return text, (sentences[len(sentences) // 2] if sentences else tail[-300:])
    rng = random.Random(0)
    words = [
        "budget",
        "river",
        "planning",
        "archive",
        "tower",
        "ledger",
        "council",
        "harvest",
        "bridge",
        "report",
        "winter",
        "survey",
    ]
    lines = [" ".join(rng.choice(words) for _ in range(120)).capitalize() + "." for _ in range(paragraphs)]
    lines.insert(max(0, len(lines) - 3), FACT)
    return "\n\n".join(lines), "Where is the spare key of the archive kept?"
