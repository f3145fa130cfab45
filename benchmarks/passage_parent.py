r"""Large passages for the generator, small ones for the dense side: each parent scored by its best child.

    python benchmarks/passage_parent.py --samples A --windows "8,9;4,5" \
        --json docs/results/passage_parent_A.json

At the shipped passage size (2,048 text tokens) dense kv alone is far behind BM25 (one vector per 2,048 tokens
says little about any one question), while at 256 tokens it is level with it. This scores each *parent* passage
(``--parent`` tokens, what the generator gets) for the dense side by the best of the ``--child``-token passages
that overlap it (LangChain's ParentDocumentRetriever, LlamaIndex's small-to-big retrieval), and keeps BM25 over
the parents. Per sample, on the same parents and questions:

- BM25 over the parents (the reference row);
- dense kv over the parents (one vector each) and fused with BM25 (weighted 0.5, the shipped fusion): what ships;
- dense kv best-child (max over the child vectors overlapping a parent) alone and fused the same way.

Children are ``eval passages``'s passages at ``--child`` tokens (whole turns), mapped to every parent they share
characters with; their raw vectors come from the cache ``passage_postprocess.py`` / ``passage_hybrid.py`` fill
(``max_length`` 512 for children and queries, ``--parent-max-length`` for parents), whitened as shipped.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from passage_hybrid import bm25_matrix
from passage_postprocess import ScoreRows, parse_windows, passage_parser, passage_setup
from postprocess_study import _cached


def children_of(parents: list[Any], children: list[Any]) -> list[list[int]]:
    """For each parent, the indices of the children that share characters with it (same document)."""
    by_document: dict[str, list[int]] = {}
    for j, child in enumerate(children):
        by_document.setdefault(child.document, []).append(j)
    out = []
    for parent in parents:
        out.append(
            [
                j
                for j in by_document.get(parent.document, [])
                if children[j].start < parent.end and parent.start < children[j].end
            ]
        )
    return out


def best_child(child_scores: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """``(queries, parents)``: each parent's best child score (``child_scores`` is ``(queries, children)``)."""
    out = np.full((child_scores.shape[0], len(groups)), -1.0, np.float32)
    for p, members in enumerate(groups):
        if members:
            out[:, p] = child_scores[:, members].max(axis=1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = passage_parser(__doc__)
    parser.set_defaults(size=2048)
    parser.add_argument("--child", type=int, default=256, help="tokens per child passage (256)")
    parser.add_argument("--child-max-length", type=int, default=512, help="embedder max_length for children")
    parser.add_argument("--parent-max-length", type=int, default=2176, help="embedder max_length for parents")
    parser.add_argument("--cached-only", action="store_true", help="skip the parents' own vectors when uncached")
    args = parser.parse_args(argv)
    setup = passage_setup(args, args.child_max_length)
    if setup is None:
        return 0
    from kvembed_rag.eval.passages import hybrid_scores, prepare
    from kvembed_rag.postprocess import apply, fit, parse_spec
    from kvembed_rag.retrieval.lexical import HybridConfig

    child_base, cache_, calibration, task = setup.base, setup.cache, setup.calibration, setup.task
    parent_base = child_base.variant(max_length=args.parent_max_length)
    fusion = HybridConfig.parse("weighted:0.5+feedback:0+document:0")  # the plain fusion
    spec = parse_spec("whiten:0.6")
    rows = ScoreRows(parent=args.size, child=args.child)
    add = rows.add

    for sample in (s.strip() for s in args.samples.split(",") if s.strip()):
        subset = task.sample(args.documents, sample)
        parents = prepare(subset, child_base.token_offsets, size=args.size)
        children = prepare(subset, child_base.token_offsets, size=args.child)
        groups = children_of(parents.passages, children.passages)
        questions = [q.text for q in parents.queries]
        child_questions = [q.text for q in children.queries]
        lexical = bm25_matrix([p.text for p in parents.passages], questions, False)
        add(sample, "bm25", lexical, parents)
        for window in parse_windows(args.windows):
            label = "kv " + (",".join(map(str, window)) or "off")
            child_embedder = child_base.variant(layers=window)
            stats = fit(cache_.encode(child_embedder, calibration, "document")[0], spec)
            # queries as the child run embedded them (same texts, same embedder: cached); reorder to the parents'
            child_query_vectors = cache_.encode(child_embedder, child_questions, "query")[0]
            position = {q.id: i for i, q in enumerate(children.queries)}
            queries = apply(child_query_vectors[[position[q.id] for q in parents.queries]], stats)
            child_docs = apply(cache_.encode(child_embedder, [c.text for c in children.passages], "document")[0], stats)
            dense_child = best_child(queries @ child_docs.T, groups)
            add(sample, f"{label} best-child", dense_child, parents)
            add(sample, f"{label} best-child + bm25 weighted:0.5", hybrid_scores(dense_child, lexical, fusion), parents)
            parent_embedder = parent_base.variant(layers=window)
            parent_texts = [p.text for p in parents.passages]
            if args.cached_only and not _cached(cache_, parent_embedder, parent_texts, "document"):
                continue
            parent_stats = fit(cache_.encode(parent_embedder, calibration, "document")[0], spec)
            parent_queries = apply(cache_.encode(parent_embedder, questions, "query")[0], parent_stats)
            parent_docs = apply(cache_.encode(parent_embedder, parent_texts, "document")[0], parent_stats)
            dense_parent = parent_queries @ parent_docs.T
            add(sample, f"{label} parent", dense_parent, parents)
            add(sample, f"{label} parent + bm25 weighted:0.5", hybrid_scores(dense_parent, lexical, fusion), parents)
        rows.write(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
