"""Grid-search the re-routing window, bias, pooling and post-processing on dev data; the winner becomes the
model's default.

Beyond the paper, which picks the window by intrinsic dimension and fixes the bias. :func:`tune` judges the
grid on one or several dev task families (STS, retrieval, classification, clustering) by the mean of each
point's rank per task, because the window that wins STS is not the one that retrieves best (with one task the
mean rank is the rank: the best score wins). The raw vectors (no post-processing) of each (window, bias,
pooling) point are computed once, and every post-processing variant is fitted on that point's raw calibration
vectors and applied to its raw dev vectors, exactly as an embedder with that configuration would produce them.
The winner is saved in the store of tuned defaults (``kvembed_rag.tuned``); embedders
built with ``layers="tuned"`` use its window, and its bias, pooling and post-processing unless those are given
(``describe()["provenance"]`` says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..layer_selection import first_candidate_layer
from ..tuned import save_tuned

#: the bias that switches re-routing off (the slot's softmax weight underflows): the no-re-routing baseline
OFF_BIAS = -1e4
#: the task families a tune can judge on, in table order
FAMILIES = ("sts", "retrieval", "classification", "clustering")
METRICS = {"sts": "spearman", "retrieval": "ndcg@10", "classification": "accuracy", "clustering": "v_measure"}


def candidate_windows(num_layers: int, width: int, stride: int | None = None) -> list[list[int]]:
    """Contiguous windows of ``width`` layers starting at 20% depth or later, every ``stride`` layers
    (default: about eight windows across the candidate range)."""
    first = first_candidate_layer(num_layers)
    last_start = num_layers - width
    if width < 1 or last_start < first:
        raise ValueError(f"a window of {width} layers does not fit between layer {first} and {num_layers - 1}")
    stride = stride or max(1, -(-(last_start - first + 1) // 8))  # ceil: at most eight windows
    return [list(range(s, s + width)) for s in range(first, last_start + 1, stride)]


# ------------------------------------------------------------------ the search
@dataclass
class DevTask:
    """One dev task of a tune: its family (``sts``, ``retrieval``, ``classification``, ``clustering``), the
    dataset's name, the loaded data and the options it was drawn with (limit, sample, seed)."""

    task: str
    dataset: str
    data: Any
    options: Any  # EvalOptions

    @property
    def metric(self) -> str:
        return METRICS[self.task]

    def describe(self) -> dict[str, Any]:
        o = self.options
        drawn = {"limit": o.limit, "sample": o.sample, "seed": o.seed}
        if self.task == "retrieval":
            drawn.update(corpus_limit=o.corpus_limit, split=o.split)
        return {"task": self.task, "dataset": self.dataset, "metric": self.metric, **drawn}


@dataclass
class TunePoint:
    """One (window, bias, pooling, post-processing) point: its score on each dev task, its rank among the
    grid on each task (1 = best; equal scores share the mean of the ranks they span) and the mean rank."""

    layers: list[int]
    bias: float
    pooling: str
    postprocess: str
    scores: dict[str, float]
    ranks: dict[str, float] = field(default_factory=dict)

    @property
    def rank_sum(self) -> float:
        return sum(self.ranks.values())

    @property
    def mean_rank(self) -> float:
        return self.rank_sum / len(self.ranks) if self.ranks else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "bias": self.bias,
            "pooling": self.pooling,
            "postprocess": self.postprocess,
            "scores": {task: round(score, 4) for task, score in self.scores.items()},
            "ranks": dict(self.ranks),
            "mean_rank": round(self.mean_rank, 4),
        }


def _comparable(score: float) -> float:
    return -math.inf if math.isnan(score) else score  # a NaN score ranks last, never first


def rank_of(score: float, scores: Sequence[float], *, member: bool = True) -> float:
    """The rank of ``score`` among ``scores`` (1 = highest): 1 + the number of higher scores + half the number
    of equal ones (the mean of the ranks a tie spans). ``member``: ``score`` is one of ``scores`` (its own
    entry is not counted); otherwise the rank it would take if it joined them."""
    mine = _comparable(score)
    values = [_comparable(s) for s in scores]
    higher = sum(v > mine for v in values)
    equal = sum(v == mine for v in values) - (1 if member else 0)
    return 1.0 + higher + 0.5 * equal


def rank_points(points: Sequence[TunePoint], tasks: Sequence[str]) -> None:
    """Set every point's rank per task among ``points`` (in place)."""
    for task in tasks:
        scores = [p.scores[task] for p in points]
        for point in points:
            point.ranks[task] = rank_of(point.scores[task], scores)


def rank_against(point: TunePoint, grid: Sequence[TunePoint]) -> TunePoint:
    """``point`` (not in ``grid``) with the ranks it would take among ``grid``'s points, task by task."""
    for task in point.scores:
        point.ranks[task] = rank_of(point.scores[task], [p.scores[task] for p in grid], member=False)
    return point


def best_point(grid: Sequence[TunePoint]) -> TunePoint:
    """The point with the lowest mean rank; ties go to the earliest in grid order (poolings, then windows,
    then biases, then post-processings, each in the order given). Rank sums are halves, exact in floats."""
    return min(grid, key=lambda p: p.rank_sum)


def ordered(grid: Sequence[TunePoint]) -> list[TunePoint]:
    """The grid from best to worst mean rank (ties in grid order, like :func:`best_point`)."""
    return sorted(grid, key=lambda p: p.rank_sum)  # sorted is stable


class PointVectors:
    """The raw vectors (no post-processing) of one (window, bias, pooling) embedder, each input list encoded
    once: every post-processing variant and the calibration fit of this point read them from here."""

    def __init__(self, embedder: Any, cache: Any) -> None:
        from .scoring import CachedEncoder

        self.embedder = embedder
        self.encoder = CachedEncoder(embedder, cache)
        self._memo: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def encode(self, texts: list[str], role: str) -> np.ndarray:
        key = (role, tuple(texts))
        if key not in self._memo:
            self._memo[key] = self.encoder.encode(list(texts), role)
        return self._memo[key]


class PostprocessedEncoder:
    """A point's raw vectors with fitted statistics applied: the vectors of the embedder with that
    post-processing (``apply`` is row-wise, what ``encode`` does inside)."""

    def __init__(self, raw: PointVectors, stats: Any) -> None:
        self.raw, self.stats = raw, stats

    def encode(self, texts: list[str], role: str) -> np.ndarray:
        from ..postprocess import apply

        vectors = self.raw.encode(texts, role)
        return vectors if self.stats is None else apply(vectors, self.stats, role)


def check_postprocess(texts: Sequence[str]) -> list[str]:
    """The canonical spellings of post-processing variants to try (``none``, ``center``, ``whiten:0.3@128`` ...);
    duplicates dropped. ``auto`` is refused: it is a rule per configuration, not one variant; so is a statistics
    file, fitted for one configuration (each variant is fitted for every point instead)."""
    from ..config import KVEmbedConfig, is_stats_path

    out: list[str] = []
    for text in texts:
        canonical = KVEmbedConfig(postprocess=str(text)).postprocess  # ConfigError says what is wrong
        if is_stats_path(canonical):
            raise ValueError(
                f"{canonical!r} is a statistics file, fitted for one configuration: tune fits each variant for "
                "every point, so name kinds such as center or whiten:0.3"
            )
        if canonical == "auto":
            raise ValueError(
                "'auto' cannot be tuned (it is the shipped default of one configuration): name the variants to "
                "try, e.g. none,center,whiten:0.3"
            )
        if canonical not in out:
            out.append(canonical)
    if not out:
        raise ValueError("give at least one post-processing variant, e.g. none")
    return out


def evaluate_point(
    base: Any,
    layers: Sequence[int],
    bias: float,
    pooling: str,
    postprocesses: Sequence[str],
    tasks: Sequence[DevTask],
    cache: Any,
) -> list[TunePoint]:
    """Score one (window, bias, pooling) point with every post-processing in ``postprocesses`` on ``tasks``.

    The raw vectors are computed once (:class:`PointVectors`); each variant's statistics come from
    :func:`~kvembed_rag.postprocess.resolve_stats` (shipped, cached or fitted on the 222 calibration texts)
    with those same raw vectors, so they equal what an embedder of this configuration would use.
    """
    from ..postprocess import resolve_stats, stats_key
    from .harness import score_task

    embedder = base.variant(layers=list(layers), bias=float(bias), pooling=pooling, postprocess="none")
    raw = PointVectors(embedder, cache)
    points = []
    for text in postprocesses:
        stats = None
        if text != "none":
            stats, _, _ = resolve_stats(text, stats_key(embedder.describe()), raw.encode)
        encoder = PostprocessedEncoder(raw, stats)
        scores = {t.task: score_task(t.task, encoder, embedder, t.data, t.options).score for t in tasks}
        points.append(TunePoint(list(embedder.layers), float(bias), pooling, text, scores))
    return points


@dataclass
class SearchResult:
    """What :func:`search` found: the ranked grid, the starting point and the no-re-routing points (by
    pooling and post-processing), both ranked against the grid."""

    grid: list[TunePoint]
    baseline: TunePoint
    off: dict[tuple[str, str], TunePoint]

    @property
    def best(self) -> TunePoint:
        return best_point(self.grid)

    @property
    def no_rerouting(self) -> TunePoint:
        best = self.best
        return self.off[(best.pooling, best.postprocess)]


def search(
    base: Any,
    tasks: Sequence[DevTask],
    *,
    windows: Sequence[Sequence[int]],
    biases: Sequence[float],
    poolings: Sequence[str],
    postprocesses: Sequence[str],
    cache: Any,
    on_point: Callable[[TunePoint], None] | None = None,
) -> SearchResult:
    """Score the grid poolings x windows x biases x post-processings (in that nesting) on ``tasks``, plus the
    starting point (``base``'s window, bias, pooling and post-processing) and re-routing off per pooling."""
    start_post = base.config.postprocess
    start = (tuple(base.layers), float(base.bias), base.pooling)
    grid: list[TunePoint] = []
    baseline: TunePoint | None = None

    def scored(points: list[TunePoint]) -> list[TunePoint]:
        if on_point is not None:
            for point in points:
                on_point(point)
        return points

    for pooling in poolings:
        for window in windows:
            for bias in biases:
                here = (tuple(window), float(bias), pooling)
                # the starting point's own post-processing joins its evaluation (same raw vectors), off the grid
                extra = [start_post] if here == start and start_post not in postprocesses else []
                points = scored(evaluate_point(base, window, bias, pooling, [*postprocesses, *extra], tasks, cache))
                grid.extend(points[: len(postprocesses)])
                if here == start:
                    baseline = next(p for p in points if p.postprocess == start_post)
    names = [t.task for t in tasks]
    rank_points(grid, names)
    if baseline is None:
        (baseline,) = scored(evaluate_point(base, base.layers, base.bias, base.pooling, [start_post], tasks, cache))
    if not any(p is baseline for p in grid):
        rank_against(baseline, grid)
    off: dict[tuple[str, str], TunePoint] = {}
    for pooling in poolings:  # re-routing off (same prompt): the winner is judged against its own pooling
        for point in scored(evaluate_point(base, base.layers, OFF_BIAS, pooling, postprocesses, tasks, cache)):
            off[(pooling, point.postprocess)] = rank_against(point, grid)
    return SearchResult(grid, baseline, off)


def _windows(base: Any, windows: Sequence[Sequence[int]] | None) -> list[list[int]]:
    chosen = [list(w) for w in windows] if windows else candidate_windows(base.num_layers, len(base.layers))
    if list(base.layers) not in chosen:
        chosen.append(list(base.layers))
    return chosen


@dataclass
class TuneResult:
    """A tune: the dev tasks, the ranked grid, the starting point and the no-re-routing reference."""

    model: str
    tasks: list[dict[str, Any]]
    grid: list[TunePoint]
    baseline: TunePoint
    no_rerouting: TunePoint  # same prompt, the best point's pooling and post-processing, re-routing off
    saved_to: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> TunePoint:
        return best_point(self.grid)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": "mean rank over the dev tasks (1 = best on a task; ties share the mean rank)",
            "model": self.model,
            "tasks": self.tasks,
            "best": self.best.to_dict(),
            "baseline": self.baseline.to_dict(),
            "no_rerouting": self.no_rerouting.to_dict(),
            "grid": [p.to_dict() for p in self.grid],
            "saved_to": self.saved_to,
            **self.extra,
        }


def format_tune(result: TuneResult, top: int = 10) -> str:
    """The ``top`` points by mean rank (each task's score and the mean rank), then the best, the starting point
    and the no-re-routing reference."""
    names = [t["task"] for t in result.tasks]
    width = max(10, *(len(n) + 2 for n in names))
    described = ", ".join(f"{t['task']} {t['dataset']} ({t['metric']})" for t in result.tasks)
    lines = [
        f"{result.model}: mean rank over {len(names)} dev task(s) of {len(result.grid)} points: {described}",
        f"{'layers':12s} {'bias':>6s} {'pooling':8s} {'postprocess':16s}"
        + "".join(f"{n:>{width}}" for n in names)
        + f"{'mean rank':>11s}",
    ]

    def row(point: TunePoint, label: str | None = None) -> str:
        text = label or ",".join(map(str, point.layers))
        return (
            f"{text:12s} {point.bias:6g} {point.pooling:8s} {point.postprocess:16s}"
            + "".join(f"{point.scores[n]:{width}.4f}" for n in names)
            + f"{point.mean_rank:11.2f}"
        )

    lines += [row(p) for p in ordered(result.grid)[:top]]
    best, start, off = result.best, result.baseline, result.no_rerouting
    lines += [
        "start (ranked against the grid):",
        row(start, ",".join(map(str, start.layers))),
        "no re-routing (same prompt, the best point's pooling and post-processing):",
        row(off, "off"),
        f"best: layers {best.layers} bias {best.bias:g} {best.pooling} pooling, post-processing {best.postprocess}"
        f" -> mean rank {best.mean_rank:.2f} of {len(result.grid)}",
        "gain over start: " + ", ".join(f"{n} {best.scores[n] - start.scores[n]:+.4f}" for n in names),
        "re-routing adds: " + ", ".join(f"{n} {best.scores[n] - off.scores[n]:+.4f}" for n in names),
    ]
    if all(off.scores[n] >= best.scores[n] for n in names):
        lines.append("note: re-routing does not beat the prompt alone on any of these dev tasks")
    return "\n".join(lines)


def load_dev_tasks(
    paths: Mapping[str, str | Path],
    *,
    options: Any = None,
    limits: Mapping[str, int | None] | None = None,
) -> list[DevTask]:
    """Load one dev set per family in ``paths`` (``sts``: STS TSV, ``retrieval``: BEIR folder,
    ``classification``: labelled texts, split per label when one file; ``clustering``: labelled texts, k-means
    V-measure on their labels) with the eval harness's loaders. ``options`` (an ``EvalOptions``) gives sample,
    seed, corpus limit and split; ``limits`` each family's limit (default ``options.limit``)."""
    import dataclasses

    from .harness import EvalOptions, load_task

    options = options or EvalOptions()
    limits = dict(limits or {})
    unknown = (set(paths) | set(limits)) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown dev task families {sorted(unknown)}; choose from {', '.join(FAMILIES)}")
    if not paths:
        raise ValueError(f"a tune needs at least one dev task ({', '.join(FAMILIES)})")
    tasks = []
    for family in FAMILIES:
        if family not in paths:
            continue
        mine = dataclasses.replace(options, limit=limits.get(family, options.limit))
        (dataset, data), *_ = load_task(family, paths[family], mine)
        tasks.append(DevTask(family, dataset, data, mine))
    return tasks


def tune(
    base: Any,
    paths: Mapping[str, str | Path],
    *,
    windows: Sequence[Sequence[int]] | None = None,
    biases: Sequence[float] = (0.0, 1.0, 2.0),
    poolings: Sequence[str] | None = None,
    postprocesses: Sequence[str] | None = None,
    options: Any = None,
    limits: Mapping[str, int | None] | None = None,
    cache: Any = None,
    save: bool = True,
    on_point: Callable[[TunePoint], None] | None = None,
) -> TuneResult:
    """Tune the kv method on one or several dev task families: the point with the lowest mean rank over the
    tasks wins (with one task: the best score; ties: the earliest in grid order) and is saved.

    ``paths`` maps families (``sts``, ``retrieval``, ``classification``, ``clustering``) to dev data (see
    :func:`load_dev_tasks`). ``poolings`` (default: the embedder's own) may add e.g. ``"last"``;
    ``postprocesses`` (default: the embedder's own, then not saved, so ``postprocess="auto"`` still decides) are
    variants such as ``"none"``, ``"center"``, ``"whiten:0.3"``, saved with the winner when given.
    """
    from .cache import EmbeddingCache
    from .harness import model_label

    cache = cache or EmbeddingCache()
    base = base.variant(method="kv")
    tasks = load_dev_tasks(paths, options=options, limits=limits)
    posts = check_postprocess(postprocesses) if postprocesses else [base.config.postprocess]
    found = search(
        base,
        tasks,
        windows=_windows(base, windows),
        biases=[float(b) for b in biases],
        poolings=list(poolings or [base.pooling]),
        postprocesses=posts,
        cache=cache,
        on_point=on_point,
    )
    no_rerouting_by = {f"{pool} {post}": p.to_dict()["scores"] for (pool, post), p in found.off.items()}
    result = TuneResult(
        model_label(base),
        [t.describe() for t in tasks],
        found.grid,
        found.baseline,
        found.no_rerouting,
        extra={"no_rerouting_by_pooling_and_postprocess": no_rerouting_by},
    )
    if save:
        best = result.best
        chosen = {"postprocess": best.postprocess} if postprocesses else {}  # only what was searched is tuned
        payload = {
            "layers": best.layers,
            "bias": best.bias,
            "pooling": best.pooling,
            **chosen,
            "model": base.source.to_dict(),
            # what it was tuned on, per family
            "tuning_set": {t["task"]: {k: v for k, v in t.items() if k != "task"} for t in result.tasks},
            **{k: v for k, v in result.to_dict().items() if k not in ("saved_to", "model")},
        }
        result.saved_to = str(save_tuned(base.source, base.num_layers, payload))
    return result
