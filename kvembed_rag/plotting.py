"""Optional plotting support: matplotlib is imported only when a plot is asked for."""

from __future__ import annotations

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
