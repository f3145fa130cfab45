r"""Passage retrieval on QMSum: which lexical side, which dense side and which fusion the shipped hybrid uses.

    python benchmarks/passage_hybrid.py --samples A,B,C,D --windows "4,5;off" \
        --json docs/results/passage_hybrid_gemma.json

Samples are ``eval passages``'s disjoint seeded blocks of meetings (A chooses; B, C and D confirm). The raw kv
vectors come from the eval cache ``passage_postprocess.py`` fills (the same embedder: ``max_length`` 512, raw
vectors), so a window that script has run costs nothing here. Per sample, every system is scored on the same
passages and questions:

- BM25 with ``eval passages``'s tokenizer (lower case, English stop words; the reference row) and the same with
  Snowball (Porter2) stemming when ``PyStemmer`` is installed (what bm25s recommends; ``pip install PyStemmer``);
- all-MiniLM-L6-v2 (sentence-transformers, when installed) alone and fused with BM25 (what a user could have
  without us);
- dense kv per window, with the shipped whitening (``whiten:0.6`` fitted on the calibration texts) and with
  ``whiten:0.9``;
- each dense side fused with each BM25 by weighted score fusion (BM25's share 0.3-0.7) and RRF (0.5-0.7).
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from passage_postprocess import ScoreRows, parse_windows, passage_parser, passage_setup

FUSIONS = ("weighted:0.3", "weighted:0.4", "weighted:0.5", "weighted:0.6", "weighted:0.7", "rrf:0.5", "rrf:0.6")


def bm25_matrix(passages: list[str], queries: list[str], stem: bool) -> np.ndarray:
    """``(queries, passages)`` BM25 (Lucene, k1 1.2, b 0.75) over ``eval passages``'s tokens, optionally stemmed."""
    import bm25s

    from kvembed_rag.retrieval.lexical import tokenize

    if stem:
        import Stemmer

        stemmer = Stemmer.Stemmer("english")

        @cache
        def one(word: str) -> str:
            return str(stemmer.stemWord(word))

        def words(text: str) -> list[str]:
            return [one(w) for w in tokenize(text)]
    else:
        words = tokenize
    model = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    model.index([words(p) for p in passages], show_progress=False)
    out = np.zeros((len(queries), len(passages)), np.float32)
    for row, query in enumerate(queries):
        known = [w for w in words(query) if w in model.vocab_dict]
        if known:
            out[row] = model.get_scores(known)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = passage_parser(__doc__)
    parser.add_argument("--overlap", type=int, default=0, help="tokens shared by consecutive passages")
    parser.add_argument("--max-length", type=int, default=512, help="the embedder's (512 shares the caches)")
    parser.add_argument("--anchor", default="all-MiniLM-L6-v2", help="sentence-transformers model ('' for none)")
    parser.add_argument("--method", default="kv", help="the dense side's method (--windows apply to kv only)")
    args = parser.parse_args(argv)
    setup = passage_setup(args, args.max_length, args.method)
    if setup is None:
        return 0
    from kvembed_rag.eval.passages import AnchorEncoder, hybrid_scores, prepare
    from kvembed_rag.postprocess import apply, fit, parse_spec
    from kvembed_rag.retrieval.lexical import HybridConfig

    base, cache_, calibration, task = setup.base, setup.cache, setup.calibration, setup.task
    anchor = AnchorEncoder(args.anchor) if args.anchor else None
    rows = ScoreRows(size=args.size, overlap=args.overlap)
    add = rows.add

    windows = parse_windows(args.windows) if args.method == "kv" else [None]
    for sample in (s.strip() for s in args.samples.split(",") if s.strip()):
        run = prepare(task.sample(args.documents, sample), base.token_offsets, size=args.size, overlap=args.overlap)
        passages = [p.text for p in run.passages]
        questions = [q.text for q in run.queries]
        lexical = {"bm25": bm25_matrix(passages, questions, False)}
        if importlib.util.find_spec("Stemmer") is not None:  # PyStemmer: a benchmark extra, not a dependency
            lexical["bm25-stem"] = bm25_matrix(passages, questions, True)
        for name, scores in lexical.items():
            add(sample, name, scores, run)
        dense_sides: dict[str, np.ndarray] = {}
        if anchor is not None:
            dense_sides[anchor.name] = anchor.encode(questions, "query") @ anchor.encode(passages, "document").T
        for window in windows:
            embedder = base if window is None else base.variant(layers=window)
            label = args.method if window is None else "kv " + (",".join(map(str, window)) or "off")
            cal_doc = cache_.encode(embedder, calibration, "document")[0]
            docs = cache_.encode(embedder, passages, "document")[0]
            queries = cache_.encode(embedder, questions, "query")[0]
            for spec in ("whiten:0.6", "whiten:0.9"):
                stats = fit(cal_doc, parse_spec(spec))
                dense_sides[f"{label} {spec}"] = apply(queries, stats) @ apply(docs, stats).T
        for dense_name, dense in dense_sides.items():
            add(sample, dense_name, dense, run)
            for lexical_name, lexical_scores in lexical.items():
                for fusion in FUSIONS:
                    config = HybridConfig.parse(f"{fusion}+feedback:0+document:0")  # the plain fusion
                    fused = hybrid_scores(dense, lexical_scores, config)
                    add(sample, f"{dense_name} + {lexical_name} {fusion}", fused, run)
        rows.write(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
