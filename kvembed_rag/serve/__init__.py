"""The embedding server: OpenAI's ``/v1/embeddings`` over a :class:`~kvembed_rag.KVEmbedder`.

Needs the ``serve`` extra (``pip install "kvembed-rag[serve]"``: FastAPI, uvicorn, prometheus-client).
``create_app`` and ``Batcher`` import the web stack; this package itself imports nothing heavy, so the
CLI can register ``kvembed-rag serve`` without it.
"""

from __future__ import annotations

from typing import Any

from .settings import API_KEY_ENV, ServeSettings

__all__ = ["API_KEY_ENV", "ServeSettings", "create_app"]


def create_app(embedder_or_factory: Any, settings: ServeSettings | None = None, **kwargs: Any) -> Any:
    """See :func:`kvembed_rag.serve.app.create_app` (imported lazily: it needs FastAPI)."""
    from .app import create_app as _create_app

    return _create_app(embedder_or_factory, settings, **kwargs)
