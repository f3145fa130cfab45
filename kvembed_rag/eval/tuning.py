"""Grid-search the re-routing window and bias on a user's dev set; the winner becomes the model's default.

Beyond the paper, which picks the window by intrinsic dimension and fixes the bias. The winner is saved in
the store of tuned defaults (``kvembed_rag.tuned``); embedders built with ``layers="tuned"`` use its window,
and its bias and pooling unless those are given (``describe()["provenance"]`` says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..layer_selection import first_candidate_layer
from ..tuned import save_tuned

#: the bias that switches re-routing off (the slot's softmax weight underflows): the no-re-routing baseline
OFF_BIAS = -1e4


def candidate_windows(num_layers: int, width: int, stride: int | None = None) -> list[list[int]]:
    """Contiguous windows of ``width`` layers starting at 20% depth or later, every ``stride`` layers
    (default: about eight windows across the candidate range)."""
    first = first_candidate_layer(num_layers)
    last_start = num_layers - width
    if width < 1 or last_start < first:
        raise ValueError(f"a window of {width} layers does not fit between layer {first} and {num_layers - 1}")
    stride = stride or max(1, -(-(last_start - first + 1) // 8))  # ceil: at most eight windows
    return [list(range(s, s + width)) for s in range(first, last_start + 1, stride)]


@dataclass
class GridPoint:
    layers: list[int]
    bias: float
    score: float
    pooling: str = "hybrid"

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "bias": self.bias, "pooling": self.pooling, "score": round(self.score, 4)}


def best_point(grid: Sequence[GridPoint]) -> GridPoint:
    """The highest-scoring point (the first of equals, i.e. the earliest in grid order)."""
    return max(grid, key=lambda p: p.score)


@dataclass
class TuneResult:
    task: str
    dataset: str
    metric: str
    model: str
    grid: list[GridPoint]
    baseline: GridPoint  # the starting configuration (ID window, bias given or 1.0)
    no_rerouting: GridPoint  # same prompt, the best point's pooling, re-routing off
    saved_to: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> GridPoint:
        return best_point(self.grid)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "dataset": self.dataset,
            "metric": self.metric,
            "model": self.model,
            "best": self.best.to_dict(),
            "baseline": self.baseline.to_dict(),
            "no_rerouting": self.no_rerouting.to_dict(),
            "grid": [p.to_dict() for p in self.grid],
            "saved_to": self.saved_to,
            **self.extra,
        }


def format_grid(result: TuneResult) -> str:
    """The grid as text: one row per window, one column per bias (per pooling and bias when several)."""
    poolings = list(dict.fromkeys(p.pooling for p in result.grid))
    biases = sorted({p.bias for p in result.grid})
    columns = [(pool, b) for pool in poolings for b in biases]
    scores = {(tuple(p.layers), p.pooling, p.bias): p.score for p in result.grid}

    def label(pool: str, b: float) -> str:
        return f"{pool} {b:g}" if len(poolings) > 1 else f"{b:g}"

    width = max(9, *(len(label(*c)) + 2 for c in columns))
    head = "pooling and bias" if len(poolings) > 1 else "bias"
    lines = [
        f"{result.model} on {result.dataset} ({result.task}, {result.metric}); rows: window, columns: {head}",
        f"{'layers':14s}" + "".join(f"{label(*c):>{width}}" for c in columns),
    ]
    for layers in dict.fromkeys(tuple(p.layers) for p in result.grid):
        cells = (scores.get((layers, pool, b), float("nan")) for pool, b in columns)
        lines.append(f"{','.join(map(str, layers)):14s}" + "".join(f"{v:{width}.4f}" for v in cells))
    best, start, off = result.best, result.baseline, result.no_rerouting
    lines += [
        f"best: layers {best.layers} bias {best.bias:g} {best.pooling} pooling -> {best.score:.4f}",
        f"start: layers {start.layers} bias {start.bias:g} {start.pooling} pooling -> {start.score:.4f} "
        f"(gain {best.score - start.score:+.4f})",
        f"no re-routing ({off.pooling} pooling, same prompt): {off.score:.4f} "
        f"(re-routing adds {best.score - off.score:+.4f})",
    ]
    if off.score >= best.score:
        lines.append("note: re-routing does not beat the prompt alone on this dev set")
    return "\n".join(lines)


def tune(
    base: Any,
    task: str,
    path: str | Path,
    *,
    windows: Sequence[Sequence[int]] | None = None,
    biases: Sequence[float] = (0.0, 1.0, 2.0),
    poolings: Sequence[str] | None = None,
    options: Any = None,
    cache: Any = None,
    save: bool = True,
    on_point: Any = None,
) -> TuneResult:
    """Score every (window, bias[, pooling]) with the kv method on ``task`` (``sts`` or ``retrieval``); keep the best.

    ``poolings`` (default: the embedder's own) may add e.g. ``"last"``, which beat the paper's hybrid pooling
    on STS-B with Gemma-3-270M.
    """
    from .cache import EmbeddingCache
    from .harness import EvalOptions, load_task, model_label, score_task
    from .scoring import CachedEncoder

    if task not in ("sts", "retrieval"):
        raise ValueError(f"tune works on an 'sts' or 'retrieval' dev set; got {task!r}")
    options = options or EvalOptions()
    cache = cache or EmbeddingCache()
    base = base.variant(method="kv")
    (dataset, data), *_ = load_task(task, path, options)
    windows = [list(w) for w in windows] if windows else candidate_windows(base.num_layers, len(base.layers))
    if list(base.layers) not in windows:
        windows.append(list(base.layers))

    poolings = list(poolings or [base.pooling])

    def evaluate(layers: list[int], bias: float, pooling: str) -> GridPoint:
        embedder = base.variant(layers=layers, bias=bias, pooling=pooling)
        score = score_task(task, CachedEncoder(embedder, cache), embedder, data, options)
        point = GridPoint(list(embedder.layers), bias, score.score, pooling)
        if on_point is not None:
            on_point(point)
        return point

    grid = [evaluate(w, float(b), pool) for pool in poolings for w in windows for b in biases]
    lookup = {(tuple(p.layers), p.bias, p.pooling): p for p in grid}
    start = (tuple(base.layers), base.bias, base.pooling)
    baseline = lookup.get(start) or evaluate(list(base.layers), base.bias, base.pooling)
    best = best_point(grid)
    # re-routing off (same prompt), once per pooling tried: the winner is judged against its own pooling
    off = {pool: evaluate(list(base.layers), OFF_BIAS, pool) for pool in poolings}
    metric = "spearman" if task == "sts" else "ndcg@10"
    extra = {
        "no_rerouting_by_pooling": {pool: round(point.score, 4) for pool, point in off.items()},
        # how the tuning set was drawn, so a saved default says what it was tuned on
        "tuning_set": {"limit": options.limit, "sample": options.sample, "seed": options.seed},
    }
    result = TuneResult(task, dataset, metric, model_label(base), grid, baseline, off[best.pooling], extra=extra)
    if save:
        payload = {
            "layers": result.best.layers,
            "bias": result.best.bias,
            "pooling": result.best.pooling,
            "model": base.source.to_dict(),
            **{k: v for k, v in result.to_dict().items() if k not in ("saved_to", "model")},
        }
        result.saved_to = str(save_tuned(base.source, base.num_layers, payload))
    return result
