"""One look for every figure: a colour per method (the same in every plot), legends outside the data, and
titles that name the model. matplotlib is imported only by :func:`pyplot` (plots are optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import KVEmbedError


def require_matplotlib() -> Any:
    """matplotlib (with the non-interactive Agg backend), or a KVEmbedError that says how to get it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise KVEmbedError("drawing a plot needs matplotlib: pip install matplotlib (or kvembed-rag[test])") from exc
    matplotlib.use("Agg")
    return matplotlib


#: one colour per method, in every figure (eval sweeps, benchmarks, tables rendered to plots)
METHOD_COLORS = {
    "kv": "#1f77b4",  # blue
    "prompteol": "#ff7f0e",  # orange
    "mean": "#2ca02c",  # green
    "last": "#d62728",  # red
    "token-prepending": "#9467bd",  # purple
    "bidirectional": "#8c564b",  # brown
    "echo": "#e377c2",  # pink
    "plain": "#7f7f7f",  # grey: the bare forward pass in benchmarks
}
_SPARE = ("#17becf", "#bcbd22", "#393b79", "#637939", "#843c39")

#: readable names of the models the project ships or documents, by spec or by eval-row label
MODEL_NAMES = {
    "default": "Gemma-3-270M",
    "gemma-3-270m (default)": "Gemma-3-270M",
    "smollm2": "SmolLM2-135M-Instruct",
}

#: datasets as the figures name them
DATASET_NAMES = {"qmsum": "QMSum", "stsb": "STS-B", "scifact": "SciFact", "banking77": "Banking77"}


def method_color(method: str) -> str:
    """The method's colour; unknown names get a stable spare colour."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _SPARE[sum(map(ord, method)) % len(_SPARE)]


def method_order(methods: Any) -> list[str]:
    """``methods`` (unique, in the palette's order, unknown ones last): every legend lists methods alike."""
    known = list(METHOD_COLORS)
    unique = list(dict.fromkeys(methods))
    return sorted(unique, key=lambda m: (known.index(m) if m in known else len(known), unique.index(m)))


def model_name(model: Any) -> str:
    """A readable model name from a spec, an eval row's ``model`` or an embedder's ``describe()["model"]``."""
    if isinstance(model, dict):
        spec = str(model.get("spec", ""))
        if spec in MODEL_NAMES:
            return MODEL_NAMES[spec]
        name = model.get("name") or model.get("file") or spec
        return Path(str(name)).name.removesuffix(".gguf") if name else "model"
    text = str(model)
    return MODEL_NAMES.get(text, Path(text).name.removesuffix(".gguf") or text)


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset.lower(), dataset)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (or a KVEmbedError saying how to install it)."""
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def legend_outside(axis: Any, **kwargs: Any) -> Any:
    """A legend to the right of the axes, never over the data."""
    return axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, **kwargs)


def save(fig: Any, path: str | Path) -> None:
    """Write ``fig`` (the legend outside included) and close it."""
    plt = pyplot()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def layer_ticks(num_layers: int) -> list[int]:
    """Every layer up to 20 layers; beyond, every second or fifth one (labels would run together)."""
    step = 1 if num_layers <= 20 else 2 if num_layers <= 40 else 5
    return list(range(0, num_layers, step))


def bench_title(meta: dict[str, Any]) -> str:
    """A benchmark chart's title from ``bench --json``'s ``meta``: model, device, dtype, threads, batch size."""
    return (
        f"{model_name(meta['model'])} on {meta['device']} ({meta['dtype']}, {meta['threads']} threads, "
        f"{meta['batch_tokens']:,} padded tokens per batch): throughput and memory per method"
    )
