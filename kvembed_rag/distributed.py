"""Deprecated module path: use ``kvembed_rag.retrieval.distributed`` (this alias will be removed in 0.3)."""

from __future__ import annotations

import warnings

from .errors import KVEmbedDeprecationWarning
from .retrieval.distributed import *  # noqa: F403
from .retrieval.distributed import __all__  # noqa: F401

warnings.warn(
    "kvembed_rag.distributed moved to kvembed_rag.retrieval.distributed; import it from there",
    KVEmbedDeprecationWarning,
    stacklevel=2,
)
