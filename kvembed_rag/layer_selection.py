"""Choose the re-routing layers by intrinsic dimensionality (KV-Embedding section 3), or by a label-free proxy.

The prompted calibration texts run once through the model without re-routing; for each layer the TwoNN
estimator (Facco et al., 2017) measures the intrinsic dimension (ID) of the last-token hidden states.
The first 20% of the layers are skipped, the layer of minimum ID is found, and re-routing happens there
and in the next floor(0.1 L) layers (clipped at the last layer).

Determinism: IDs are compared after rounding to 1e-6 relative, and ties go to the earliest layer, so a
flat curve selects the first candidate layer (the same window as :func:`default_window`). Layers
whose ID cannot be estimated (NaN: too few distinct points) are never chosen; if none can be, the default
window is used with a warning.

The proxy rule (``rule="proxy"``, not the default) needs no labels either: each calibration text is cut in
two at its middle word, and for each candidate window (the same start layers and length as the ID rule) the
first halves, embedded as queries, retrieve the second halves, embedded as documents, among all of them;
the window with the best mean reciprocal rank wins. It judges the re-routing by a retrieval-like task built
from the texts alone, where the ID rule judges a property of the states without re-routing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from ._io import write_json_atomically
from .config import LAYER_RULES
from .errors import ConfigError

logger = logging.getLogger(__name__)

#: bump when the estimator, the rule or the preprocessing change, so cached selections are recomputed
RULE_VERSION = 1
#: the same for the proxy rule
PROXY_VERSION = 1
#: the selection rules: intrinsic dimension (the paper's) and the half-text retrieval proxy
RULES = ("id", "proxy")


def middle_window(num_layers: int) -> list[int]:
    """``layers="middle"``: round(L / 10) layers (at least one) centred on the middle layer, L // 2.

    Not a measurement of the model: a depth prior. It is the window that won the label-scored window searches
    on both offline models (Gemma-3-270M, 18 layers: [8, 9]; SmolLM2-135M, 30 layers: [14, 15, 16];
    docs/RESULTS.md), where the ID rule ([4, 5], [29]) and the proxy ([6, 7], [20, 21, 22]) missed."""
    if num_layers < 1:
        raise ValueError(f"a model needs at least one layer; got {num_layers}")
    length = max(1, int(num_layers / 10 + 0.5))
    start = max(0, min(num_layers // 2 - length // 2, num_layers - length))
    return list(range(start, start + length))


def first_candidate_layer(num_layers: int) -> int:
    """The first layer at or past 20% of the depth (the first 20% are never re-routed)."""
    if num_layers < 1:
        raise ValueError(f"a model needs at least one layer; got {num_layers}")
    return min(math.ceil(0.2 * num_layers), num_layers - 1)


def default_window(num_layers: int) -> list[int]:
    """The fallback re-routing window: starts at 20% of the depth, floor(0.1 L) + 1 layers long."""
    start = first_candidate_layer(num_layers)
    length = num_layers // 10 + 1
    return list(range(start, min(start + length, num_layers)))


def validate_layers(layers: object, num_layers: int) -> list[int]:
    """Explicit layers: a list of distinct ints in ``[0, num_layers)``, sorted."""
    if isinstance(layers, int):
        layers = [layers]
    if not isinstance(layers, (list, tuple, range, set, frozenset)):
        raise TypeError(
            f"layers must be a rule ({', '.join(LAYER_RULES)}) or a list of layer indices; got {type(layers).__name__}"
        )
    result: list[int] = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer indices must be ints; got {layer!r}")
        index = layer + num_layers if layer < 0 else layer
        if not 0 <= index < num_layers:
            raise ConfigError(
                f"layer {layer} is out of range for a model with {num_layers} layers (0..{num_layers - 1})"
            )
        result.append(index)
    return sorted(set(result))


def twonn(points: np.ndarray, discard_fraction: float = 0.1) -> float:
    """TwoNN intrinsic dimension of ``points`` ``(n, d)``, regression form with the largest ratios discarded.

    Duplicate points are reduced to one copy before the nearest neighbours are taken: zero distances would
    make r2/r1 infinite or undefined and collapse the estimate to about 1. Pairwise distances are computed
    in memory, O(n^2): fine for calibration sets of a few thousand points. Returns NaN when fewer than 3
    distinct points remain.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"points must be a 2-D array (n, d); got shape {x.shape}")
    squared = (x * x).sum(axis=1)
    distances = squared[:, None] + squared[None, :] - 2.0 * (x @ x.T)  # (n, n)
    np.maximum(distances, 0.0, out=distances)
    np.sqrt(distances, out=distances)
    np.fill_diagonal(distances, np.inf)
    finite = distances[np.isfinite(distances)]
    scale = float(np.median(finite)) if finite.size else 1.0
    # duplicates: the Gram-matrix form leaves ~sqrt(eps) * |x| of rounding where a distance is exactly 0.
    # Keep the first copy of each point only; copies would pull r1 to 0 and the estimate to 1.
    same = distances <= 1e-6 * (scale or 1.0)
    keep_rows = ~np.triu(same, k=1).any(axis=0)  # drop a point that equals an earlier one
    distances = distances[np.ix_(keep_rows, keep_rows)]
    if distances.shape[0] < 3:
        return float("nan")
    nearest = np.partition(distances, 1, axis=1)[:, :2]  # (n, 2): r1 <= r2
    r1, r2 = nearest[:, 0], nearest[:, 1]
    usable = np.isfinite(r2) & (r1 > 0)
    mu = np.sort(r2[usable] / r1[usable])
    n = len(mu)
    if n < 3:
        return float("nan")
    keep = min(n - 1, max(2, math.floor(n * (1.0 - discard_fraction))))  # F = 1 at the last point
    empirical = np.arange(1, n + 1, dtype=np.float64) / n  # F(mu_i) over all n, before discarding
    xs = np.log(mu[:keep])
    ys = -np.log1p(-empirical[:keep])
    denominator = float((xs * xs).sum())
    return float((xs * ys).sum() / denominator) if denominator > 0 else float("nan")


def choose_window(curve: list[float], num_layers: int) -> list[int]:
    """Skip the first 20%, take the minimum-ID layer (earliest on ties) and the next floor(0.1 L) layers."""
    start = first_candidate_layer(num_layers)
    candidates = [(i, curve[i]) for i in range(start, num_layers) if i < len(curve) and math.isfinite(curve[i])]
    if not candidates:
        warnings.warn(
            "no layer's intrinsic dimension could be estimated (too few distinct calibration texts?); "
            "using the default re-routing window",
            RuntimeWarning,
            stacklevel=2,
        )
        return default_window(num_layers)
    lowest = min(value for _, value in candidates)
    tolerance = 1e-6 * max(abs(lowest), 1.0)
    best = next(i for i, value in candidates if value <= lowest + tolerance)
    return list(range(best, min(best + num_layers // 10 + 1, num_layers)))


def load_calibration(path: str | Path | None = None) -> list[str]:
    """The shipped calibration set (222 varied texts) or one text per line from ``path`` (``#`` comments)."""
    if path is None:
        text = files("kvembed_rag").joinpath("data/calibration.txt").read_text(encoding="utf-8")
    else:
        from ._io import read_text_file  # UTF-8 or refused, naming the file and byte

        source = Path(path)
        text = read_text_file(source)
        if source.suffix == ".jsonl":  # one object per line with a "text" field
            return [
                _jsonl_text(source, number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()
            ]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _jsonl_text(source: Path, number: int, line: str) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}:{number}: not JSON ({exc.msg})") from exc
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise ValueError(f"{source}:{number}: expected an object with a string 'text' field")
    return str(row["text"])


@dataclass
class LayerSelection:
    """The ID curve (one value per layer) and the chosen window."""

    curve: list[float]
    layers: list[int]
    num_layers: int
    normalized: bool
    n_texts: int
    cached: bool = False
    key: dict[str, Any] = field(default_factory=dict)
    #: which rule made the curve: ``id`` (intrinsic dimension, lower is better) or ``proxy`` (half-text retrieval
    #: MRR of the window starting at each layer, higher is better; NaN where no window starts)
    rule: str = "id"
    #: proxy only: the same score with re-routing off (``layers=[]``), the reference every window must beat
    off: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "curve": [None if not math.isfinite(v) else round(v, 4) for v in self.curve],
            "layers": self.layers,
            "num_layers": self.num_layers,
            "normalized": self.normalized,
            "n_texts": self.n_texts,
            "cached": self.cached,
            "key": self.key,
            "rule": self.rule,
        }
        if self.off is not None:
            out["off"] = round(self.off, 4)
        return out


def id_curve(embedder: Any, texts: list[str], *, normalize: bool = True) -> list[float]:
    """TwoNN ID of each layer's output at the last token, for the prompted ``texts`` (no re-routing)."""
    states = embedder.last_token_states(texts)  # (L, n, H)
    curve = []
    for layer in states:
        if normalize:
            layer = layer / np.maximum(np.linalg.norm(layer, axis=1, keepdims=True), 1e-12)
        curve.append(twonn(layer))
    return curve


def _cache_key(embedder: Any, texts: list[str], normalize: bool) -> dict[str, Any]:
    """What the selection depends on: the weights (by content hash, not by name), the prompt, the texts."""
    info = embedder.describe()
    return {
        "rule": RULE_VERSION,
        "model": info["model"]["identity"] or info["model"]["spec"],
        "architecture": info["architecture"],
        "num_layers": info["num_layers"],
        "dtype": info["dtype"],
        "prompt": info["prompts"]["document"],
        "normalize": normalize,
        "calibration": hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16],
    }


def _packaged(key: dict[str, Any]) -> dict[str, Any] | None:
    """Selections shipped with the package for its offline models (the same computation, done once)."""
    try:
        shipped = json.loads(files("kvembed_rag").joinpath("data/layer_selections.json").read_text())
    except (OSError, ValueError):
        return None
    found = next((entry for entry in shipped if entry.get("key") == key), None)
    if found is None and key.get("dtype") in ("bfloat16", "float16"):
        # the shipped window was chosen in float32; a half-precision copy of the same weights keeps it (the ID
        # curve is the weights' property, and recomputing it in bf16 would move the default window by noise)
        as_float = {**key, "dtype": "float32"}
        found = next((entry for entry in shipped if entry.get("key") == as_float), None)
        if found is not None:
            found = {**found, "key": key}
    return found


def select_layers(
    embedder: Any,
    texts: list[str] | None = None,
    *,
    normalize: bool = True,
    use_cache: bool = True,
    rule: str = "id",
) -> LayerSelection:
    """The window for ``embedder``'s model and prompt, shipped or cached by key: by default the ID-minimum
    (``rule="id"``: anything with ``describe()``, ``last_token_states`` and ``num_layers``, a ``KVEmbedder`` or a
    ``Forward``); ``rule="proxy"``: the best half-text retrieval window (:func:`proxy_selection`, a ``KVEmbedder``)."""
    from .artifacts import cached_artifact

    if rule not in RULES:
        raise ValueError(f"unknown layer-selection rule {rule!r}; choose from {', '.join(RULES)}")
    calibration = load_calibration() if texts is None else list(texts)
    if len(calibration) < 3:
        raise ValueError(f"layer selection needs at least 3 calibration texts; got {len(calibration)}")
    if rule == "proxy":
        return proxy_selection(embedder, calibration, use_cache=use_cache)
    key = _cache_key(embedder, calibration, normalize)
    num_layers = embedder.num_layers

    def parse(stored: dict[str, Any]) -> LayerSelection:
        if stored.get("key") != key:
            raise ValueError("key mismatch")
        curve = [float("nan") if v is None else float(v) for v in stored["curve"]]
        layers = [int(i) for i in stored["layers"]]
        if len(curve) != num_layers or not layers:
            raise ValueError("wrong shape")
        return LayerSelection(curve, layers, num_layers, normalize, len(calibration), True, key)

    def compute() -> LayerSelection:
        curve = id_curve(embedder, calibration, normalize=normalize)
        return LayerSelection(
            curve, choose_window(curve, num_layers), num_layers, normalize, len(calibration), False, key
        )

    def shipped() -> LayerSelection | None:
        packaged = _packaged(key)
        try:
            return None if packaged is None else parse(packaged)
        except (ValueError, KeyError, TypeError):  # a shipped entry this release cannot use: compute instead
            return None

    selection, _ = cached_artifact(
        "layers",
        key,
        suffix=".json",
        shipped=shipped,
        read=lambda path: parse(json.loads(path.read_text())),
        write=lambda path, value: write_json_atomically(path, value.to_dict()),
        compute=compute,
        use_cache=use_cache,
    )
    return selection


# ------------------------------------------------------------------ the label-free proxy rule
def split_halves(texts: list[str], min_words: int = 4) -> tuple[list[str], list[str]]:
    """Each text of at least ``min_words`` words cut at its middle word: (first halves, second halves)."""
    first, second = [], []
    for text in texts:
        words = text.split()
        if len(words) >= min_words:
            middle = len(words) // 2
            first.append(" ".join(words[:middle]))
            second.append(" ".join(words[middle:]))
    return first, second


def half_retrieval_scores(queries: np.ndarray, documents: np.ndarray) -> dict[str, float]:
    """Row i of ``queries`` should retrieve row i of ``documents``: top-1 accuracy and mean reciprocal rank by
    cosine, after subtracting the documents' mean (a label-free centring, so a shared direction that every
    vector carries does not decide the ranking). Ties count against the right answer."""
    q = np.asarray(queries, dtype=np.float64)
    d = np.asarray(documents, dtype=np.float64)
    if q.shape != d.shape or q.ndim != 2 or len(q) < 2:
        raise ValueError(f"need matching (n, dim) arrays with n >= 2; got {q.shape} and {d.shape}")
    mean = d.mean(axis=0, keepdims=True)
    q, d = q - mean, d - mean
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    similarity = q @ d.T
    right = np.diag(similarity)[:, None]
    ranks = (similarity >= right).sum(axis=1)  # the right one itself plus every other at least as close
    return {"top1": float((ranks == 1).mean()), "mrr": float((1.0 / ranks).mean())}


def proxy_windows(num_layers: int, length: int | None = None) -> list[list[int]]:
    """The proxy's candidates: the ID rule's window length (floor(0.1 L) + 1), one window per start layer from
    the first candidate layer (20% depth) on, as long as the window fits."""
    length = length or num_layers // 10 + 1
    first = first_candidate_layer(num_layers)
    starts = range(first, max(first, num_layers - length) + 1)
    return [list(range(s, min(s + length, num_layers))) for s in starts]


def proxy_curve(
    embedder: Any, texts: list[str], windows: list[list[int]] | None = None
) -> tuple[dict[int, dict[str, float]], dict[str, float]]:
    """Half-text retrieval (top-1 and MRR) for each window (by its start layer) and with re-routing off, with
    ``embedder``'s bias, pooling and prompts and no post-processing."""
    first, second = split_halves(texts)
    if len(first) < 3:
        raise ValueError(
            f"the proxy rule needs at least 3 calibration texts of 4 or more words; got {len(first)}: give longer "
            "texts (one per line) or use rule='id'"
        )

    def score(layers: list[int]) -> dict[str, float]:
        variant = embedder.variant(layers=layers, postprocess="none")
        return half_retrieval_scores(variant.encode(first, "query"), variant.encode(second, "document"))

    scores = {w[0]: score(w) for w in (windows or proxy_windows(embedder.num_layers))}
    return scores, score([])


def choose_proxy_window(scores: dict[int, float], windows: list[list[int]]) -> list[int]:
    """The window with the highest score (earliest start on ties, within 1e-9)."""
    best = max(scores.values())
    start = min(s for s, v in scores.items() if v >= best - 1e-9)
    return next(w for w in windows if w[0] == start)


def proxy_selection(embedder: Any, texts: list[str], *, use_cache: bool = True) -> LayerSelection:
    """``rule="proxy"``: the curve holds each start layer's MRR (NaN where no window starts), cached on disk."""
    key = {
        **_cache_key(embedder, texts, False),
        "rule": f"proxy-{PROXY_VERSION}",
        "query_prompt": embedder.describe()["prompts"]["query"],
        "bias": float(embedder.bias),
        "pooling": embedder.pooling,
    }
    del key["normalize"]
    n = len(split_halves(texts)[0])
    num_layers = embedder.num_layers

    def parse(stored: dict[str, Any]) -> LayerSelection:
        if stored.get("key") != key:
            raise ValueError("key mismatch")
        curve = [float("nan") if v is None else float(v) for v in stored["curve"]]
        layers = [int(i) for i in stored["layers"]]
        return LayerSelection(curve, layers, num_layers, False, n, True, key, "proxy", stored["off"])

    def compute() -> LayerSelection:
        windows = proxy_windows(num_layers)
        scores, off = proxy_curve(embedder, texts, windows)
        mrr = {start: value["mrr"] for start, value in scores.items()}
        curve = [mrr.get(layer, float("nan")) for layer in range(num_layers)]
        chosen = choose_proxy_window(mrr, windows)
        return LayerSelection(curve, chosen, num_layers, False, n, False, key, "proxy", off["mrr"])

    from .artifacts import cached_artifact

    selection, _ = cached_artifact(
        "layers",
        key,
        suffix=".json",
        read=lambda path: parse(json.loads(path.read_text())),
        write=lambda path, value: write_json_atomically(path, value.to_dict()),
        compute=compute,
        use_cache=use_cache,
    )
    return selection


def plot_curve(selection: LayerSelection, path: str | Path, title: str = "") -> None:
    """Draw the ID curve with the skipped layers greyed and the chosen window highlighted.

    ``title`` should name the model (the command line passes its readable name).
    """
    from .plotting import layer_ticks, legend_outside, method_color, pyplot, save

    plt = pyplot()
    layers = list(range(selection.num_layers))
    values = [v if math.isfinite(v) else np.nan for v in selection.curve]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    skip = first_candidate_layer(selection.num_layers)
    ax.axvspan(-0.5, skip - 0.5, color="0.9", label="skipped (first 20%)")
    ax.axvspan(
        selection.layers[0] - 0.5,
        selection.layers[-1] + 0.5,
        color=method_color("kv"),
        alpha=0.18,
        label=f"re-routed: {selection.layers}",
    )
    ax.plot(layers, values, marker="o", markersize=4, color=method_color("kv"), label="TwoNN ID (last token)")
    ax.set_xlabel("layer")
    ax.set_ylabel("intrinsic dimension")
    ax.set_title(title or f"Intrinsic dimension per layer ({selection.num_layers} layers)")
    ax.set_xticks(layer_ticks(selection.num_layers))
    ax.set_xlim(-0.5, selection.num_layers - 0.5)
    ax.grid(alpha=0.3, axis="y")
    legend_outside(ax)
    fig.tight_layout()
    save(fig, path)
