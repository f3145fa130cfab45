"""Exceptions raised by kvembed-rag. Each message says what was wrong and what to do."""

from __future__ import annotations

from typing import Any


class KVEmbedError(Exception):
    """Base class of every error this package raises on purpose."""


class UnsupportedModelError(KVEmbedError):
    """The model cannot be re-routed: it does not dispatch attention through transformers' registry."""


class UnsupportedAttentionError(KVEmbedError, ValueError):
    """An attention kernel was requested that has no place for the prefix slot's bias (flash, flex)."""


class ModelLoadError(KVEmbedError):
    """A model specification could not be resolved to weights and a tokenizer."""


class MergedSlotFallbackWarning(RuntimeWarning):
    """The fast merged-slot kernel disagreed with the explicit-mask reference at load; the reference is used."""


def require_matplotlib() -> Any:
    """matplotlib, or a KVEmbedError that says how to get it (plots are optional)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise KVEmbedError("drawing a plot needs matplotlib: pip install matplotlib (or kvembed-rag[test])") from exc
    return matplotlib
