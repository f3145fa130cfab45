"""Deprecated module path: use ``kvembed_rag.eval.mteb`` (this alias will be removed in 0.3)."""

from __future__ import annotations

import warnings

from .errors import KVEmbedDeprecationWarning
from .eval.mteb import *  # noqa: F403
from .eval.mteb import __all__  # noqa: F401

warnings.warn(
    "kvembed_rag.mteb moved to kvembed_rag.eval.mteb; import it from there",
    KVEmbedDeprecationWarning,
    stacklevel=2,
)
