"""Isotropy calibration across task families: every method setting x post-processing, two disjoint samples.

    python benchmarks/postprocess_study.py --model default --methods kv,prompteol --embed-only
    python benchmarks/postprocess_study.py --model default --methods kv,prompteol --cached-only --json FILE

Raw vectors are computed ONCE per method setting and text list (through the evaluation's on-disk
:class:`EmbeddingCache`, so re-runs and new post-processing variants cost nothing); every post-processing
variant is then fitted (on the method's document-prompted vectors of the 222 shipped calibration texts, or
for ``corpus-center`` on the task's own documents) and scored on those vectors.

Families, each with a choosing sample ``A`` (seed 0) and a disjoint confirming sample ``B``:

- ``sts``: STS-B dev pairs, a seeded permutation; A = its first N pairs, B = the next N (Spearman).
- ``scifact``: SciFact dev judged queries, seeded permutation; A = first Q, B = next Q, over ONE haystack of
  every document judged for A or B plus seeded random others up to D documents (nDCG@10).
- ``banking``: Banking77 ``train.csv`` split 75/25 per label (seed 0); A and B are disjoint seeded samples of
  N training and N test texts; logistic regression on the raw vectors (MTEB's protocol; accuracy).
- ``clustering``: the same Banking77 texts of each sample (train + test), k-means with k = intents (V-measure).
- ``qmsum``: QMSum meetings, seeded permutation of documents; A = first M meetings with every query they
  answer, B = the next M (chunked at ``max_length``, a meeting scores by its best chunk; nDCG@10).

A candidate is a (method setting, post-processing) pair; the mixed dev objective is its mean rank over the
families on sample A. The JSON holds every score; ``--cached-only`` skips what is not in the cache.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")

# method settings: name -> embedder options (layers "id" = the shipped ID-rule window, ignoring any saved tune)
SETTINGS: dict[str, dict[str, Any]] = {
    "kv": dict(method="kv", layers="id"),
    "kv-last": dict(method="kv", layers="id", pooling="last"),
    "kv-last-b2": dict(method="kv", layers="id", pooling="last", bias=2.0),
    "kv-mid": dict(method="kv", layers="middle"),
    "kv-off": dict(method="kv", layers=[]),  # the same configuration without re-routing: kv's own ablation
    "prompteol": dict(method="prompteol"),
    "token-prepending": dict(method="token-prepending"),
    "last": dict(method="last"),
    "mean": dict(method="mean"),
    "echo": dict(method="echo"),
    "bidirectional": dict(method="bidirectional"),
    "htp": dict(method="htp"),  # hierarchical token prepending; the QMSum family chunks with its own embedder
}
FAMILIES = ("sts", "banking", "clustering", "scifact")  # qmsum on request: it costs ~10x the rest


def variants() -> dict[str, Any]:
    """Post-processing variants scored for every method; ``corpus-center`` is handled per task."""
    from kvembed_rag.postprocess import PostprocessSpec

    out: dict[str, Any] = {"none": PostprocessSpec("none"), "center": PostprocessSpec("center")}
    out["corpus-center"] = PostprocessSpec("center")
    for k in (1, 2, 4, 8, 16):
        out[f"remove-top-{k}"] = PostprocessSpec("remove-top", components=k)
    for s in (0.1, 0.3, 0.6):
        out[f"whiten-s{s}"] = PostprocessSpec("whiten", shrinkage=s)
    out["whiten-lw"] = PostprocessSpec("whiten", shrinkage="auto")
    out["whiten-s0.3-d256"] = PostprocessSpec("whiten", shrinkage=0.3, dim=256)
    out["center-d256"] = PostprocessSpec("center", dim=256)
    return out


@dataclass
class Sample:
    """What one family's sample needs embedded, and how to score vectors for it."""

    family: str
    name: str
    texts: dict[str, tuple[list[str], str]]  # part -> (texts, role)
    score: Callable[[dict[str, np.ndarray]], float]
    corpus_part: str  # the part whose mean is the task's own "corpus" mean
    extra: dict[str, Any] = field(default_factory=dict)
    max_length: int | None = None  # embed this sample's texts with a shorter window (None: the run's)


def _perm(count: int, seed: int) -> list[int]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order


SAMPLE_NAMES = "ABC"  # consecutive disjoint blocks of each family's seeded order: A chooses, B confirms, C re-checks


def sts_samples(n: int, names: tuple[str, ...] = ("A", "B")) -> list[Sample]:
    from kvembed_rag.eval.metrics import spearman
    from kvembed_rag.eval.tasks import load_sts

    pairs = load_sts(DATA / "stsb" / "dev.tsv")
    order = _perm(len(pairs.scores), 0)
    out = []
    for name in names:
        j = SAMPLE_NAMES.index(name)
        keep = sorted(order[j * n : (j + 1) * n])
        texts = [pairs.first[i] for i in keep] + [pairs.second[i] for i in keep]
        gold = pairs.scores[keep]

        def score(v: dict[str, np.ndarray], gold: np.ndarray = gold, n: int = len(keep)) -> float:
            x = v["pairs"]
            return spearman((x[:n] * x[n:]).sum(axis=1), gold)

        out.append(Sample("sts", name, {"pairs": (texts, "document")}, score, "pairs", {"n": len(keep)}))
    return out


def scifact_samples(
    queries: int, docs: int, max_length: int | None = None, names: tuple[str, ...] = ("A", "B")
) -> list[Sample]:
    from kvembed_rag.eval.tasks import load_beir

    task = load_beir(DATA / "scifact", "dev")
    judged = [q for q in task.queries if q in task.qrels]
    order = _perm(len(judged), 0)
    picks = {n: [judged[i] for i in order[SAMPLE_NAMES.index(n) * queries :][:queries]] for n in names}
    # A and B share one haystack (as they always have); a later sample gets its own, built the same way
    groups = [[n for n in names if n in "AB"], *[[n] for n in names if n not in "AB"]]
    out = []
    for group in filter(None, groups):
        out += _scifact_group(task, {n: picks[n] for n in group}, docs, max_length)
    return out


def _scifact_group(task: Any, picks: dict[str, list[str]], docs: int, max_length: int | None) -> list[Sample]:
    from kvembed_rag.eval.scoring import rank_documents, score_rankings

    needed = {d for qs in picks.values() for q in qs for d in task.qrels[q] if d in task.corpus}
    others = sorted(set(task.corpus) - needed)
    random.Random(0).shuffle(others)
    keep = needed | set(others[: max(0, docs - len(needed))])
    doc_ids = [d for d in task.corpus if d in keep]
    doc_texts = [f"{t}\n{b}".strip() if t else b for t, b in (task.corpus[d] for d in doc_ids)]
    out = []
    for name, qids in picks.items():
        qrels = {q: task.qrels[q] for q in qids}

        def score(v: dict[str, np.ndarray], qids: list[str] = qids, qrels: dict[str, Any] = qrels) -> float:
            ranked = rank_documents(v["queries"], v["docs"], doc_ids, 100)
            return score_rankings(ranked, qids, qrels)["ndcg@10"]

        parts = {"docs": (doc_texts, "document"), "queries": ([task.queries[q] for q in qids], "query")}
        extra = {"queries": len(qids), "docs": len(doc_ids), "max_length": max_length or 0}
        out.append(Sample("scifact", name, parts, score, "docs", extra, max_length))
    return out


def banking_samples(n: int, intents: int, names: tuple[str, ...] = ("A", "B")) -> list[Sample]:
    from kvembed_rag.eval.learners import fit_predict_logistic, kmeans
    from kvembed_rag.eval.metrics import accuracy, v_measure
    from kvembed_rag.eval.tasks import load_classification

    train, test, _ = load_classification(DATA / "banking77", seed=0)
    labels = sorted(set(train.labels))
    chosen = set(random.Random(0).sample(labels, min(intents, len(labels))))  # a seeded subset of intents
    in_train = [i for i, label in enumerate(train.labels) if label in chosen]
    in_test = [i for i, label in enumerate(test.labels) if label in chosen]
    train_order = [in_train[i] for i in _perm(len(in_train), 0)]
    test_order = [in_test[i] for i in _perm(len(in_test), 1)]
    out = []
    for name in names:
        j = SAMPLE_NAMES.index(name)
        tr = sorted(train_order[j * n : (j + 1) * n])
        if name in "AB":
            te = sorted(test_order[j * n : (j + 1) * n])
            tr_y, te_y = [train.labels[i] for i in tr], [test.labels[i] for i in te]
            te_texts = [test.texts[i] for i in te]
        else:  # the test split holds ~40 texts per intent, A and B use them up: C tests on unused training texts
            te = sorted(train_order[(j + 1) * n : (j + 2) * n])
            tr_y, te_y = [train.labels[i] for i in tr], [train.labels[i] for i in te]
            te_texts = [train.texts[i] for i in te]
        parts = {"train": ([train.texts[i] for i in tr], "document"), "test": (te_texts, "document")}

        def classify(v: dict[str, np.ndarray], tr_y: list[str] = tr_y, te_y: list[str] = te_y) -> float:
            return accuracy(fit_predict_logistic(v["train"], tr_y, v["test"]), te_y)

        def cluster(v: dict[str, np.ndarray], tr_y: list[str] = tr_y, te_y: list[str] = te_y) -> float:
            labels = tr_y + te_y
            return v_measure(kmeans(np.vstack([v["train"], v["test"]]), len(set(labels)), seed=0), labels)

        out.append(Sample("banking", name, parts, classify, "train", {"train": len(tr), "test": len(te)}))
        out.append(Sample("clustering", name, parts, cluster, "train", {"texts": len(tr) + len(te)}))
    return out


def qmsum_samples(embedder: Any, meetings: int) -> list[Sample]:
    from kvembed_rag.eval.scoring import rank_by_best_chunk, score_rankings
    from kvembed_rag.eval.tasks import load_beir
    from kvembed_rag.retrieval.chunking import chunk_text

    task = load_beir(DATA / "qmsum", "dev")
    ids = sorted(task.corpus)
    order = _perm(len(ids), 0)
    out = []
    for j, name in enumerate(("A", "B")):
        keep = {ids[i] for i in order[j * meetings : (j + 1) * meetings]}
        qrels = {
            q: g
            for q, g in task.qrels.items()
            if q in task.queries and any(v > 0 for v in g.values()) and {d for d, v in g.items() if v > 0} <= keep
        }
        doc_ids = [d for d in task.corpus if d in keep]
        texts: list[str] = []
        owner: list[int] = []
        for position, d in enumerate(doc_ids):
            title, body = task.corpus[d]
            pieces = chunk_text(embedder, body, title=title or None)
            texts.extend(p.text for p in pieces)
            owner.extend([position] * len(pieces))
        qids = list(qrels)

        def score(
            v: dict[str, np.ndarray], qids: list[str] = qids, qrels: dict[str, Any] = qrels,
            owner: list[int] = owner, doc_ids: list[str] = doc_ids,
        ) -> float:  # fmt: skip
            ranked = rank_by_best_chunk(v["queries"], v["chunks"], np.asarray(owner), doc_ids, 100)
            return score_rankings(ranked, qids, qrels)["ndcg@10"]

        parts = {"chunks": (texts, "document"), "queries": ([task.queries[q] for q in qids], "query")}
        out.append(
            Sample(
                "qmsum",
                name,
                parts,
                score,
                "chunks",
                {"meetings": len(doc_ids), "queries": len(qids), "chunks": len(texts)},
            )
        )
    return out


def build_samples(args: argparse.Namespace, embedder: Any, families: list[str]) -> list[Sample]:
    samples: list[Sample] = []
    names = tuple(getattr(args, "samples", "A,B").replace(",", ""))  # window_search.py --samples; A,B otherwise
    if "sts" in families:
        samples += sts_samples(args.sts_pairs, names)
    if "banking" in families or "clustering" in families:
        samples += [s for s in banking_samples(args.banking, args.banking_intents, names) if s.family in families]
    if "scifact" in families:
        samples += scifact_samples(args.scifact_queries, args.scifact_docs, args.scifact_max_length, names)
    if "qmsum" in families:
        samples += qmsum_samples(embedder, args.qmsum_meetings)
    return samples


def _cached(cache: Any, embedder: Any, texts: list[str], role: str) -> bool:
    vectors_path, stats_path = cache._paths(embedder, texts, role)
    return bool(vectors_path.is_file() and stats_path.is_file())


def make_embedder(base: Any, setting: str) -> Any:
    options = dict(SETTINGS[setting])
    return base.variant(**options)  # "middle": layer_selection.middle_window (Gemma [8, 9], SmolLM2 [14, 15, 16])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--methods", default="kv,prompteol", help=f"comma-separated, from {sorted(SETTINGS)}")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--sts-pairs", type=int, default=150)
    parser.add_argument("--banking", type=int, default=150, help="training and test texts per sample")
    parser.add_argument("--banking-intents", type=int, default=20, help="a seeded subset of the 77 intents")
    parser.add_argument("--scifact-queries", type=int, default=20)
    parser.add_argument("--scifact-docs", type=int, default=80)
    parser.add_argument("--scifact-max-length", type=int, help="cut abstracts shorter than --max-length (CPU)")
    parser.add_argument("--qmsum-meetings", type=int, default=6)
    parser.add_argument("--embed-only", action="store_true", help="fill the cache, score nothing")
    parser.add_argument("--cached-only", action="store_true", help="score only what the cache already holds")
    parser.add_argument("--json", help="write every score here")
    parser.add_argument(
        "--include", action="append", default=[], help="also report the rows of an earlier --json file (repeatable)"
    )
    parser.add_argument(
        "--base-postprocess",
        default="none",
        help="the embedders' own post-processing: none (raw vectors, every variant scored) or auto (each "
        "method's shipped default inside encode; only that is scored, as post-processing 'shipped')",
    )
    parser.add_argument(
        "--reference",
        default="kv:whiten-s0.3-d256",
        help="SETTING:POST compared head to head with every other setting at its own best (default: Gemma's "
        "shipped kv default; SmolLM2's is kv:whiten-s0.3)",
    )
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"no data at {DATA}: skipping", file=sys.stderr)
        return 0

    from kvembed_rag import KVEmbedder
    from kvembed_rag.eval.cache import EmbeddingCache
    from kvembed_rag.layer_selection import load_calibration

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    settings = [m.strip() for m in args.methods.split(",") if m.strip()]
    # raw vectors: every variant (incl. the shipped default, fitted again here) is applied by this script
    base = KVEmbedder.from_pretrained(
        args.model, max_length=args.max_length, dtype=args.dtype, layers="id", postprocess=args.base_postprocess
    )
    cache = EmbeddingCache("default")
    calibration = load_calibration()
    rows: list[dict[str, Any]] = []
    for setting in settings:
        embedder = make_embedder(base, setting)
        samples = build_samples(args, embedder, families)
        parts_needed = [("calibration", calibration, "document", embedder)]
        for s in samples:
            window = embedder if s.max_length is None else embedder.variant(max_length=s.max_length)
            parts_needed += [(f"{s.family}/{s.name}/{p}", t, r, window) for p, (t, r) in s.texts.items()]
        vectors: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
        missing = False
        for label, texts, role, encoder in parts_needed:
            key = (role, tuple(texts))
            if key in vectors:
                continue
            if args.cached_only and not _cached(cache, encoder, texts, role):
                print(f"[{setting}] {label}: not cached, skipped", flush=True)
                missing = True
                continue
            start = time.perf_counter()
            vectors[key], stats = cache.encode(encoder, texts, role)
            if not stats.cached:
                print(f"[{setting}] {label}: {len(texts)} texts, {stats.tokens} tokens, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
        if args.embed_only:
            continue

        def get(texts: list[str], role: str, vectors: dict[Any, np.ndarray] = vectors) -> np.ndarray | None:
            return vectors.get((role, tuple(texts)))

        cal = get(calibration, "document")
        if cal is None:
            continue
        rows += score_setting(args.model, setting, embedder, cal, samples, get, shipped=args.base_postprocess != "none")
        del missing
    if args.embed_only:
        return 0
    for earlier in args.include:  # e.g. the shipped-default rows of a --base-postprocess auto run
        rows += json.loads(Path(earlier).read_text())["rows"]
    if args.json:  # before the tables, so a report that fails loses no scores
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    report(rows)
    setting, _, post = args.reference.partition(":")
    head_to_head(rows, (setting, post))
    return 0


def score_setting(
    model: str, setting: str, embedder: Any, cal: np.ndarray, samples: list[Sample], get: Any, shipped: bool = False
) -> list[dict[str, Any]]:
    from kvembed_rag.postprocess import PostprocessSpec, apply, fit

    # shipped: the vectors already carry the embedder's own post-processing; score them as they are
    specs = {"shipped": PostprocessSpec("none")} if shipped else variants()
    fitted = {}
    for name, spec in specs.items():
        if name == "corpus-center":
            continue
        try:
            fitted[name] = fit(cal, spec)
        except ValueError as exc:  # e.g. @256 from 222 calibration texts: directions the texts do not determine
            print(f"[{setting}] {name}: not scored ({exc})", flush=True)
    specs = {name: spec for name, spec in specs.items() if name in fitted or name == "corpus-center"}
    rows = []
    for s in samples:
        raw = {p: get(t, r) for p, (t, r) in s.texts.items()}
        if any(v is None for v in raw.values()):
            continue
        for name, spec in specs.items():
            stats = fit(raw[s.corpus_part], spec) if name == "corpus-center" else fitted[name]
            value = s.score({p: apply(v, stats) for p, v in raw.items()})
            rows.append(dict(model=model, setting=setting, family=s.family, sample=s.name, post=name,
                             score=round(float(value), 4), **s.extra))  # fmt: skip
        print(f"[{setting}] {s.family}/{s.name}: " + "  ".join(
            f"{r['post']} {r['score']:.4f}" for r in rows if r["family"] == s.family and r["sample"] == s.name
        ), flush=True)  # fmt: skip
    return rows


def mean_ranks(
    table: dict[tuple[str, str], dict[tuple[str, str], float]], candidates: list[tuple[str, str]], families: list[str]
) -> dict[tuple[str, str], float]:
    """Mean over ``families`` of each candidate's rank on sample A (1 = best; ties share the better rank)."""
    ranks: dict[tuple[str, str], list[int]] = {c: [] for c in candidates}
    for f in families:
        for c in candidates:
            ranks[c].append(1 + sum(table[o][(f, "A")] > table[c][(f, "A")] for o in candidates))
    return {c: float(np.mean(r)) for c, r in ranks.items()}


def head_to_head(rows: list[dict[str, Any]], reference: tuple[str, str]) -> None:
    """``reference`` (a fixed, already chosen candidate) against every other setting at its best: the variant
    with the best mean rank over the families on A (chosen on A, scored on B), and the per-family best on A
    (an oracle that favours the baseline). The verdict is read on B, which chose nothing."""
    table: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
    for r in rows:
        table.setdefault((r["setting"], r["post"]), {})[(r["family"], r["sample"])] = r["score"]
    if reference not in table:
        return
    families = [f for f in (*FAMILIES, "qmsum") if (f, "A") in table[reference]]
    others = [s for s in dict.fromkeys(r["setting"] for r in rows) if s != reference[0]]
    print(f"\nhead to head on B: {reference[0]} {reference[1]} against each setting at its best")
    print(
        "| family | "
        + f"{reference[0]} {reference[1]} A / B | "
        + " | ".join(f"{s} chosen A / B | {s} per-family best on A (A / B)" for s in others)
        + " | best other on B (chosen on A) |"
    )
    for f in families:
        ref = table[reference]
        cells = [f"{ref[(f, 'A')]:.4f} / {ref.get((f, 'B'), np.nan):.4f}"]
        best_b = -np.inf
        for s in others:
            cands = [c for c in table if c[0] == s and all((g, "A") in table[c] for g in families)]
            if not cands:
                cells += ["–", "–"]
                continue
            ranks = mean_ranks(table, cands, families)
            chosen = min(cands, key=lambda c: (ranks[c], -np.mean([table[c][(g, "A")] for g in families])))
            oracle = max(cands, key=lambda c: table[c][(f, "A")])
            cells.append(f"{chosen[1]} {table[chosen][(f, 'A')]:.4f} / {table[chosen].get((f, 'B'), np.nan):.4f}")
            cells.append(f"{oracle[1]} {table[oracle][(f, 'A')]:.4f} / {table[oracle].get((f, 'B'), np.nan):.4f}")
            best_b = max(best_b, table[chosen].get((f, "B"), -np.inf))
        gap = ref.get((f, "B"), np.nan) - best_b
        print(f"| {f} | " + " | ".join(cells) + f" | {best_b:.4f} (kv {gap:+.4f}) |")


def report(rows: list[dict[str, Any]]) -> None:
    """Per family: every setting x post-processing on both samples; then the mixed objective (mean rank on A),
    within each setting (which post-processing) and across all candidates that have every family."""
    families = [f for f in (*FAMILIES, "qmsum") if any(r["family"] == f for r in rows)]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    posts = list(dict.fromkeys(r["post"] for r in rows))
    table: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
    for r in rows:
        table.setdefault((r["setting"], r["post"]), {})[(r["family"], r["sample"])] = r["score"]
    for f in families:
        have = [s for s in settings if (f, "A") in table.get((s, "none"), {})]
        print(f"\n{f}: score on A (choosing) / B (confirming)")
        print("| post-processing | " + " | ".join(have) + " |")
        print("|---" * (len(have) + 1) + "|")
        for p in posts:
            row_cells = [
                # a variant a setting could not fit (e.g. @256 beyond what its calibration texts determine): NaN
                f"{table.get((s, p), {}).get((f, 'A'), float('nan')):.4f} / "
                f"{table.get((s, p), {}).get((f, 'B'), float('nan')):.4f}"
                for s in have
            ]
            print(f"| {p} | " + " | ".join(row_cells) + " |")
    for s in settings:
        fams = [f for f in families if (f, "A") in table.get((s, "none"), {})]
        cands = [(s, p) for p in posts if all((f, "A") in table.get((s, p), {}) for f in fams)]
        ranks = mean_ranks(table, cands, fams)
        print(f"\n{s}: post-processing by mean rank over {', '.join(fams)} on A; gain over none on A / B")
        for c in sorted(cands, key=lambda c: ranks[c]):
            gains = "  ".join(
                f"{f} {table[c][(f, 'A')] - table[(s, 'none')][(f, 'A')]:+.4f}/"
                f"{table[c].get((f, 'B'), np.nan) - table[(s, 'none')].get((f, 'B'), np.nan):+.4f}"
                for f in fams
            )
            print(f"  {c[1]:>18} rank {ranks[c]:5.2f}  {gains}")
    full = [c for c in table if all((f, "A") in table[c] for f in families)]
    if full:
        ranks = mean_ranks(table, full, families)
        print(f"\nevery candidate with all of {', '.join(families)}, by mean rank on A (lower is better)")
        print("| setting | post | mean rank A | " + " | ".join(f"{f} A / B" for f in families) + " |")
        for c in sorted(full, key=lambda c: ranks[c])[:25]:
            cells = " | ".join(f"{table[c][(f, 'A')]:.4f} / {table[c].get((f, 'B'), np.nan):.4f}" for f in families)
            print(f"| {c[0]} | {c[1]} | {ranks[c]:.2f} | {cells} |")


if __name__ == "__main__":
    raise SystemExit(main())
