"""Passage retrieval under every post-processing, from one set of raw vectors per window and sample.

    python benchmarks/passage_postprocess.py --samples A,B --documents 4 --windows "4,5;8,9;off" \
        --json docs/results/passage_postprocess.json

Why: dense kv passage retrieval on QMSum depends on the post-processing far more than on anything else (raw
vectors 0.07 nDCG@10, shipped whitening 0.23 on 12 val meetings), and whitening fitted on the corpus's own
passages -- what ``index --fit-postprocess`` does -- lost 0.13 there. This script finds out why: the raw vectors
of the calibration texts (both roles), the sample's passages and its questions are computed once (the eval
cache), then each variant is fitted and scored in seconds:

- ``calibration``: fitted on the 222 shipped calibration texts embedded as documents (what ``auto`` ships);
- ``corpus``: fitted on the sample's own passages (``index --fit-postprocess``);
- ``corpus+calibration``: on both;
- ``… per-role mean``: each role centred on its own mean (queries on the calibration texts embedded as
  queries) before the shared whitening, to test whether the trap is the offset between the query and the
  document prompt's vectors.

Every row has the same embedder with ``layers=[]`` beside it when ``off`` is among the windows, and BM25 and the
weighted hybrid (BM25 share 0.5, the shipped default) for each variant.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "qmsum_spans"


def parse_windows(text: str) -> list[list[int]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        out.append([] if part == "off" else [int(x) for x in part.split(",")])
    return out


def centred(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return (vectors - mean).astype(np.float32)


def variants(
    cal_doc: np.ndarray, cal_query: np.ndarray, corpus: np.ndarray, queries: np.ndarray, docs: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``name -> (query vectors, passage vectors)`` after each post-processing."""
    from kvembed_rag.postprocess import apply, fit, parse_spec

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {"none": (queries, docs)}
    for spec_text in ("center", "whiten:0.6", "whiten:0.9"):
        spec = parse_spec(spec_text)
        for where, fit_on in (
            ("calibration", cal_doc),
            ("corpus", corpus),
            ("corpus+calibration", np.concatenate([corpus, cal_doc])),
        ):
            stats = fit(fit_on, spec)
            out[f"{spec_text} {where}"] = (apply(queries, stats), apply(docs, stats))
        # each role on its own mean (queries: the calibration texts embedded as queries), shared statistics
        for where, fit_on, doc_mean in (("calibration", cal_doc, cal_doc.mean(0)), ("corpus", corpus, corpus.mean(0))):
            stats = fit(centred(fit_on, fit_on.mean(0)), spec)
            q = apply(centred(queries, cal_query.mean(0)), stats)
            out[f"{spec_text} {where} per-role mean"] = (q, apply(centred(docs, doc_mean), stats))
        # corpus fit, queries centred on the corpus mean moved by the calibration's query - document offset
        stats = fit(corpus, spec)
        offset = cal_query.mean(0) - cal_doc.mean(0)
        out[f"{spec_text} corpus role offset"] = (apply(centred(queries, offset), stats), apply(docs, stats))
    return out


class ScoreRows:
    """The rows a passage benchmark writes: one per (sample, system), the run's metrics and ``extra`` fields."""

    def __init__(self, **extra: Any) -> None:
        self.extra = extra
        self.rows: list[dict[str, Any]] = []

    def add(self, sample: str, system: str, scores: np.ndarray, run: Any, **extra: Any) -> None:
        metrics = run.score(scores)
        row = {"sample": sample, "system": system, "queries": len(run.queries), **self.extra, **extra}
        row = {**row, "passages": len(run.passages), **metrics}
        self.rows.append(row)
        print(
            f"{sample} {system:48s} ndcg@10 {metrics['ndcg@10']:.4f} R@5 {metrics['recall@5']:.3f} "
            f"answer@1024 {metrics.get('answer@1024', float('nan')):.3f} "
            f"answer@2048 {metrics.get('answer@2048', float('nan')):.3f}",
            flush=True,
        )

    def write(self, args: argparse.Namespace) -> None:
        if args.json:
            payload = {"args": vars(args) | {"json": str(args.json)}, "rows": self.rows}
            args.json.write_text(json.dumps(payload, indent=1))


@dataclass
class PassageSetup:
    """What every passage benchmark starts from."""

    base: Any  # the raw (un-post-processed) embedder; windows are variants of it
    cache: Any  # the evaluation's vector cache
    calibration: list[str]  # the shipped calibration texts (the whitening is fitted on them)
    task: Any  # the qmsum_spans passage task


def passage_setup(args: argparse.Namespace, max_length: int, method: str = "kv") -> PassageSetup | None:
    """Load what a passage benchmark needs, on ``--threads`` threads; ``None`` (after saying so) without the data."""
    if not DATA.is_dir():
        print(f"no data at {DATA}: skipping", file=sys.stderr)
        return None
    import torch

    from kvembed_rag import KVEmbedder
    from kvembed_rag.eval.cache import EmbeddingCache
    from kvembed_rag.eval.passages import load_passage_task
    from kvembed_rag.layer_selection import load_calibration

    torch.set_num_threads(args.threads)
    base = KVEmbedder.from_pretrained(
        args.model, method=method, max_length=max_length, dtype=args.dtype, postprocess="none"
    )
    return PassageSetup(base, EmbeddingCache("default"), load_calibration(), load_passage_task(DATA))


def pool_vectors(
    setup: PassageSetup, args: argparse.Namespace, embedder: Any, sample: str, texts: list[str], role: str
) -> Any:
    """``(texts, dim)`` raw vectors of a sample's passages or questions from the eval cache; with ``args.parts``
    (a ``--documents N`` sample read as its ``parts`` consecutive ``N/parts``-document samples: samples are blocks
    of one seeded shuffle, so the passages are the same) assembled from those samples' cached vectors."""
    import numpy as np

    from kvembed_rag.eval.passages import SAMPLES, prepare

    if not getattr(args, "parts", 0):
        return setup.cache.encode(embedder, texts, role)[0]
    size, first = args.documents // args.parts, SAMPLES.index(sample) * args.parts
    found: dict[str, Any] = {}
    for part in SAMPLES[first : first + args.parts]:
        run = prepare(setup.task.sample(size, part), setup.base.token_offsets, size=args.size)
        own = [p.text for p in run.passages] if role == "document" else [q.text for q in run.queries]
        found.update(zip(own, setup.cache.encode(embedder, own, role)[0], strict=True))
    return np.stack([found[text] for text in texts])


def shipped_sides(
    setup: PassageSetup,
    args: argparse.Namespace,
    window: list[int],
    sample: str,
    passages: list[str],
    questions: list[str],
) -> tuple[str, Any, Any]:
    """``(label, queries, docs)``: a window's questions and passages under the shipped whitening (``whiten:0.6``,
    fitted on the calibration texts), unit length, ``(queries, dim)`` and ``(passages, dim)``."""
    import numpy as np

    from kvembed_rag.postprocess import apply, fit, parse_spec

    embedder = setup.base.variant(layers=window)
    stats = fit(setup.cache.encode(embedder, setup.calibration, "document")[0], parse_spec("whiten:0.6"))
    docs = apply(pool_vectors(setup, args, embedder, sample, passages, "document"), stats)
    queries = apply(pool_vectors(setup, args, embedder, sample, questions, "query"), stats)
    docs = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return "kv " + (",".join(map(str, window)) or "off"), queries, docs


def passage_parser(description: str | None) -> argparse.ArgumentParser:
    """The options every passage benchmark shares (``passage_hybrid.py`` adds its own)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--samples", default="A,B", help="eval passages' samples, e.g. A,B or C,D")
    parser.add_argument("--documents", type=int, default=4, help="meetings per sample")
    parser.add_argument(
        "--parts",
        type=int,
        default=0,
        help="read the vectors of a --documents N sample from the cache of its N/parts-document samples (the same "
        "passages: samples are consecutive blocks of one seeded shuffle), instead of embedding the pool again",
    )
    parser.add_argument("--size", type=int, default=256, help="tokens per passage")
    parser.add_argument("--windows", default="4,5;off", help="re-routed windows, ';'-separated; 'off' = layers=[]")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = passage_parser(__doc__).parse_args(argv)
    # max_length 512 (every passage fits): the calibration vectors are shared with window_search.py's cache
    setup = passage_setup(args, 512)
    if setup is None:
        return 0
    from kvembed_rag.eval.passages import bm25_scores, hybrid_scores, prepare
    from kvembed_rag.retrieval.lexical import HybridConfig

    base, cache, calibration, task = setup.base, setup.cache, setup.calibration, setup.task
    hybrid = HybridConfig.parse("weighted:0.5+feedback:0+document:0")  # the plain fusion
    rows: list[dict[str, Any]] = []
    for window in parse_windows(args.windows):
        embedder = base.variant(layers=window)
        name = ",".join(map(str, window)) or "off"
        cal_doc = cache.encode(embedder, calibration, "document")[0]
        cal_query = cache.encode(embedder, calibration, "query")[0]
        for sample in (s.strip() for s in args.samples.split(",") if s.strip()):
            run = prepare(task.sample(args.documents, sample), embedder.token_offsets, size=args.size)
            passages = [p.text for p in run.passages]
            docs = cache.encode(embedder, passages, "document")[0]
            queries = cache.encode(embedder, [q.text for q in run.queries], "query")[0]
            lexical = bm25_scores(run.passages, run.queries)
            if not any(r["system"] == "bm25" and r["sample"] == sample for r in rows):
                rows.append({"window": "-", "sample": sample, "post": "-", "system": "bm25", **run.score(lexical)})
                print(f"bm25   {sample} ndcg@10 {rows[-1]['ndcg@10']:.4f}", flush=True)
            for post, (q, d) in variants(cal_doc, cal_query, docs, queries, docs).items():
                dense = q @ d.T
                for system, scores in (("dense", dense), ("hybrid w0.5", hybrid_scores(dense, lexical, hybrid))):
                    metrics = run.score(scores)
                    rows.append({"window": name, "sample": sample, "post": post, "system": system, **metrics})
                    print(
                        f"{name:6s} {sample} {system:11s} {post:40s} ndcg@10 {metrics['ndcg@10']:.4f} "
                        f"R@5 {metrics['recall@5']:.3f}",
                        flush=True,
                    )
            if args.json:
                payload = {"args": vars(args) | {"json": str(args.json)}, "rows": rows}
                args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
