"""Every method side by side on one task: rows of task x dataset x method x length, a table and a plot."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .cache import EmbeddingCache
from .scoring import (
    CachedEncoder,
    Encoder,
    Score,
    evaluate_classification,
    evaluate_clustering,
    evaluate_long_retrieval,
    evaluate_retrieval,
    evaluate_sts,
)
from .tasks import load_beir, load_classification, load_clustering, load_loco, load_sts

TASKS = ("sts", "retrieval", "classification", "clustering", "loco")


@dataclass
class EvalRow:
    task: str
    dataset: str
    model: str
    method: str
    max_length: int
    metric: str
    score: float
    n: int
    seconds: float  # encoding time when the vectors were computed (cached rows keep the original figure)
    tokens: int  # tokens fed to the model, prompts included
    cached: bool
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        extra = row.pop("extra")
        row["score"] = round(self.score, 4)
        row["seconds"] = round(self.seconds, 1)
        return {**row, **{k: round(v, 4) for k, v in extra.items()}}


@dataclass
class EvalOptions:
    """How much of a dataset to use (say so when reporting reduced runs)."""

    limit: int | None = None  # sts pairs, judged queries, texts per classification side, clustering texts
    sample: bool = False  # sts / retrieval / loco: a seeded random `limit` pairs or queries, not the first ones
    corpus_limit: int | None = None  # retrieval: judged documents plus a seeded sample of the rest
    documents: int | None = None  # loco: a seeded sample of documents and only the queries they answer
    split: str = "dev"
    long_docs: str = "chunk"
    test_fraction: float = 0.25
    standardize: bool = False  # classification: z-score features with the training set's statistics first
    seed: int = 0
    dataset_names: dict[str, str] = field(default_factory=dict)


def dataset_name(path: str | Path) -> str:
    """``stsb/dev.tsv`` -> ``stsb``; ``data/scifact`` -> ``scifact``."""
    p = Path(path).resolve()
    if p.is_file() and p.stem.lower() in ("dev", "test", "train", "validation", "data", "queries", "corpus"):
        return p.parent.name
    return p.stem if p.is_file() else p.name


def load_task(task: str, path: str | Path, options: EvalOptions) -> list[tuple[str, Any]]:
    """(dataset name, loaded data) pairs; loco folders may hold several datasets."""
    name = dataset_name(path)
    if task == "sts":
        return [(name, load_sts(path, options.limit, sample=options.sample, seed=options.seed))]
    if task == "retrieval":
        beir = load_beir(
            path,
            options.split,
            query_limit=options.limit,
            corpus_limit=options.corpus_limit,
            seed=options.seed,
            sample=options.sample,
        )
        return [(name, beir)]
    if task == "classification":
        train, test, how = load_classification(
            path, limit=options.limit, test_fraction=options.test_fraction, seed=options.seed
        )
        return [(name, (train, test, how))]
    if task == "clustering":
        return [(name, load_clustering(path, limit=options.limit, seed=options.seed))]
    if task == "loco":
        tasks = load_loco(path, split=options.split, seed=options.seed)
        return [
            (
                key,
                beir.sample_documents(options.documents, options.seed).limited(
                    options.limit, None, options.seed, sample=options.sample
                ),
            )
            for key, beir in tasks.items()
        ]
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def score_task(task: str, encoder: Encoder, embedder: Any, data: Any, options: EvalOptions) -> Score:
    if task == "sts":
        return evaluate_sts(encoder, data)
    if task == "retrieval":
        return evaluate_retrieval(encoder, data)
    if task == "classification":
        return evaluate_classification(encoder, data[0], data[1], standardize=options.standardize)
    if task == "clustering":
        return evaluate_clustering(encoder, data, seed=options.seed)
    return evaluate_long_retrieval(encoder, embedder, data, long_docs=options.long_docs)


def model_label(embedder: Any) -> str:
    spec = str(embedder.source.spec)
    return "gemma-3-270m (default)" if spec == "default" else Path(spec).name or spec


def run_evaluation(
    base: Any,
    task: str,
    paths: Sequence[str | Path],
    *,
    methods: Sequence[str] = ("kv",),
    lengths: Sequence[int] | None = None,
    options: EvalOptions | None = None,
    cache: EmbeddingCache | None = None,
    on_row: Callable[[EvalRow], None] | None = None,
) -> list[EvalRow]:
    """Evaluate ``methods`` on the backbone of ``base`` (one model load) at each of ``lengths`` tokens.

    Variants share the backbone and ``base``'s re-routed layers and bias; vectors are cached per variant.
    """
    options = options or EvalOptions()
    cache = cache or EmbeddingCache()
    rows: list[EvalRow] = []
    for path in paths:
        for name, data in load_task(task, path, options):
            for length in lengths or [base.max_length]:
                for method in methods:
                    embedder = base.variant(method=method, max_length=length)
                    encoder = CachedEncoder(embedder, cache)
                    score = score_task(task, encoder, embedder, data, options)
                    extra = dict(score.extra)
                    if encoder.stats.truncated:
                        extra["truncated"] = float(encoder.stats.truncated)
                    row = EvalRow(
                        task=task,
                        dataset=options.dataset_names.get(name, name),
                        model=model_label(base),
                        method=embedder.method,
                        max_length=length,
                        metric=score.metric,
                        score=score.score,
                        n=score.n,
                        seconds=encoder.stats.seconds,
                        tokens=encoder.stats.tokens,
                        cached=encoder.stats.cached,
                        extra=extra,
                    )
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
    return rows


def format_table(rows: Sequence[EvalRow]) -> str:
    """A fixed-width table, one line per row, secondary metrics at the end."""
    lines = [
        f"{'task':14s} {'dataset':16s} {'method':17s} {'length':>6s} {'metric':10s} {'score':>7s} {'n':>6s} "
        f"{'tokens':>9s} {'seconds':>8s}  other"
    ]
    for r in rows:
        other = ", ".join(f"{k} {v:.4g}" for k, v in r.extra.items())
        lines.append(
            f"{r.task:14s} {r.dataset[:16]:16s} {r.method:17s} {r.max_length:6d} {r.metric:10s} {r.score:7.4f} "
            f"{r.n:6d} {r.tokens:9d} {r.seconds:8.1f}{' (cached)' if r.cached else ''}  {other}"
        )
    return "\n".join(lines)


def plot_length_sweep(rows: Sequence[EvalRow], path: str | Path, title: str = "") -> None:
    """Score against max_length, one line per dataset and method (colours shared by every figure).

    A marker per measured length; a line joins two of a method's points only when no length between them
    was measured for another method (a method measured at 512 and 4,096 only shows two separate markers).
    Each dataset gets its own panel; the default title names the model(s) and dataset(s).
    """
    from ..plotting import dataset_name, legend_outside, method_color, method_order, model_name, pyplot, save

    plt = pyplot()
    datasets = list(dict.fromkeys(r.dataset for r in rows)) or [""]
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.2 * len(datasets) + 1.6, 4.2), squeeze=False)
    lengths = sorted({r.max_length for r in rows})
    models = list(dict.fromkeys(r.model for r in rows))
    metric = rows[0].metric if rows else "score"
    for axis, dataset in zip(axes[0], datasets, strict=True):
        mine = [r for r in rows if r.dataset == dataset]
        for model in models:
            for method in method_order(r.method for r in mine if r.model == model):
                scores = {r.max_length: r.score for r in mine if r.model == model and r.method == method}
                label = method if len(models) == 1 else f"{method} ({model_name(model)})"
                axis.plot(
                    lengths,
                    [scores.get(n, float("nan")) for n in lengths],  # NaN breaks the line where unmeasured
                    marker="o",
                    linestyle="-" if models.index(model) == 0 else "--",
                    color=method_color(method),
                    label=label,
                )
        axis.set_xscale("log", base=2)
        axis.set_xticks(lengths, [f"{n:,}" for n in lengths])
        axis.minorticks_off()
        axis.set_xlabel("max_length (tokens per input; longer documents are chunked)")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        if len(datasets) > 1:
            axis.set_title(dataset_name(dataset))
    legend_outside(axes[0][-1])
    task = rows[0].task if rows else ""
    names = " vs ".join(model_name(m) for m in models)
    fig.suptitle(
        title or f"{names} on {', '.join(dataset_name(d) for d in datasets)} ({task}): {metric} by input length"
    )
    fig.tight_layout()
    save(fig, path)
