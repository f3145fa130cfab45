"""sentence-transformers' vocabulary on :class:`~kvembed_rag.KVEmbedder`.

Code written for ``sentence_transformers.SentenceTransformer`` runs on a ``KVEmbedder`` unchanged: the names below
mirror its v3-v5 API (``encode`` keywords, ``encode_query``/``encode_document``, ``similarity``,
``get_sentence_embedding_dimension`` ...). Vectors are always unit-norm (``normalize_embeddings`` only accepts
the fact).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .prompts import Role


class SentenceTransformersAPI:
    """Mixin: the class provides ``encode(texts, role, prompt_name=..., **options)``, ``dim``, ``max_length`` and
    ``device``."""

    similarity_fn_name = "cosine"

    if TYPE_CHECKING:

        def encode(self, *args: Any, **kwargs: Any) -> Any: ...

        @property
        def dim(self) -> int: ...

        @property
        def max_length(self) -> int: ...

        @property
        def device(self) -> torch.device: ...

    def _encode_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Check and translate sentence-transformers' ``encode`` keywords.

        ``batch_size`` is accepted and ignored: batches here are sized by ``batch_tokens`` (padded tokens),
        and the vectors do not depend on batching. ``normalize_embeddings=False`` still returns unit vectors
        (cosine is the only similarity the method defines). ``device`` must be the model's own device (move
        the model with ``from_pretrained(device=...)``). ``truncate_dim`` keeps the first dimensions and
        re-normalises them (Matryoshka style; KV-Embedding was not trained for it, so expect a loss).
        """
        known = {
            "batch_size",
            "show_progress_bar",
            "normalize_embeddings",
            "precision",
            "device",
            "output_value",
            "truncate_dim",
            "batch_tokens",
            "show_progress",
            "ranges",
            "calibration_embeddings",
            "prompt",
        }
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"encode() got unexpected keyword arguments {unknown}")
        if options.get("prompt") is not None:
            raise ValueError(
                "a literal prompt= string is not supported: templates are part of the embedder's configuration; "
                "use prompt_name='query'|'document' or build the embedder with prompts={...}"
            )
        output_value = options.get("output_value", "sentence_embedding")
        if output_value not in (None, "sentence_embedding"):
            raise ValueError(f"output_value={output_value!r} is not supported; only 'sentence_embedding'")
        device = options.get("device")
        if device is not None and torch.device(device) != self.device:
            raise ValueError(
                f"device={device!r} differs from the model's device {self.device}; load the embedder there instead "
                "(from_pretrained(device=...))"
            )
        batch_size = options.get("batch_size")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)):
            raise TypeError(f"batch_size must be an int; got {batch_size!r}")
        truncate_dim = options.get("truncate_dim")
        if truncate_dim is not None and not (isinstance(truncate_dim, int) and 0 < truncate_dim <= self.dim):
            raise ValueError(f"truncate_dim must be an int in 1..{self.dim}; got {truncate_dim!r}")
        progress = options.get("show_progress")
        if progress is None:
            progress = options.get("show_progress_bar")
        from .quantization import PRECISIONS

        precision = options.get("precision", "float32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
        return {
            "batch_tokens": options.get("batch_tokens"),
            "progress": progress,
            "precision": precision,
            "truncate_dim": truncate_dim,
            "ranges": options.get("ranges"),
            "calibration_embeddings": options.get("calibration_embeddings"),
        }

    def encode_query(self, sentences: str | Sequence[str], **kwargs: Any) -> Any:
        """sentence-transformers v5's ``encode_query``: :meth:`encode` with the query prompt."""
        return self.encode(sentences, prompt_name="query", **kwargs)

    def encode_document(self, sentences: str | Sequence[str], **kwargs: Any) -> Any:
        """sentence-transformers v5's ``encode_document``: :meth:`encode` with the document prompt."""
        return self.encode(sentences, prompt_name="document", **kwargs)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """``(n, m)`` cosine similarities as a float32 tensor (sentence-transformers' ``similarity``)."""
        a, b = _as_matrix(embeddings1), _as_matrix(embeddings2)
        return torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """``(n,)`` cosine similarity of each row with the same row of the other (``similarity_pairwise``)."""
        a, b = _as_matrix(embeddings1), _as_matrix(embeddings2)
        if a.shape != b.shape:
            raise ValueError(f"pairwise similarity needs equal shapes; got {tuple(a.shape)} and {tuple(b.shape)}")
        return (torch.nn.functional.normalize(a, dim=-1) * torch.nn.functional.normalize(b, dim=-1)).sum(-1)

    def get_sentence_embedding_dimension(self) -> int:
        """Embedding width (sentence-transformers' name for :attr:`dim`)."""
        return self.dim

    def get_max_seq_length(self) -> int:
        """Tokens per input, prompt included (sentence-transformers' name for :attr:`max_length`)."""
        return self.max_length

    @property
    def max_seq_length(self) -> int:
        """Tokens per input, prompt included. Read-only: change it with ``variant(max_length=...)``."""
        return self.max_length


_ROLE_ALIASES: dict[str, Role] = {
    "query": "query",
    "queries": "query",
    "search_query": "query",
    "document": "document",
    "documents": "document",
    "passage": "document",
    "corpus": "document",
    "search_document": "document",
}


def role_from(role: str | None, prompt_name: str | None) -> Role:
    """The role from the positional ``role`` or sentence-transformers' ``prompt_name`` (both: they must agree)."""
    resolved: list[Role] = []
    if role is not None:
        if role not in ("document", "query"):
            raise ValueError(f"unknown role {role!r}; use 'query' or 'document'")
        resolved.append("query" if role == "query" else "document")
    if prompt_name is not None:  # sentence-transformers' prompt names, with the usual aliases
        if prompt_name not in _ROLE_ALIASES:
            raise ValueError(f"unknown role/prompt_name {prompt_name!r}; use 'query' or 'document'")
        resolved.append(_ROLE_ALIASES[prompt_name])
    if len(set(resolved)) > 1:
        raise ValueError(f"role={role!r} and prompt_name={prompt_name!r} disagree; give one of them")
    return resolved[0] if resolved else "document"


def finish(
    vectors: np.ndarray, single: bool, settings: dict[str, Any], *, convert_to_tensor: bool, convert_to_numpy: bool
) -> np.ndarray | torch.Tensor | list[torch.Tensor]:
    """Truncate, quantise and convert ``(n, dim)`` float32 vectors as ``encode``'s options ask."""
    if settings["truncate_dim"] is not None:
        vectors = vectors[:, : settings["truncate_dim"]]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    out: np.ndarray = vectors
    if settings["precision"] != "float32":
        from .quantization import quantize_embeddings

        out = quantize_embeddings(
            vectors,
            settings["precision"],
            calibration_embeddings=settings["calibration_embeddings"],
            ranges=settings["ranges"],
        )
    if convert_to_tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(out))
        return tensor[0] if single else tensor
    if not convert_to_numpy:  # sentence-transformers then returns a list of 1-D tensors
        rows = [torch.from_numpy(np.ascontiguousarray(row)) for row in out]
        return rows[0] if single else rows
    return out[0] if single else out


def _as_matrix(embeddings: Any) -> torch.Tensor:
    tensor = embeddings if isinstance(embeddings, torch.Tensor) else torch.as_tensor(np.asarray(embeddings))
    if isinstance(embeddings, list) and embeddings and isinstance(embeddings[0], torch.Tensor):
        tensor = torch.stack(embeddings)
    tensor = tensor.float()
    return tensor[None, :] if tensor.ndim == 1 else tensor


__all__ = ["SentenceTransformersAPI", "finish", "role_from"]
