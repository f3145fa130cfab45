"""An MTEB model wrapper, so users with a network can run official MTEB tasks on any method.

    import mteb
    from kvembed_rag.eval.mteb import MTEBEncoder

    model = MTEBEncoder("default", method="kv")          # or a hub id: MTEBEncoder("Qwen/Qwen3-4B")
    mteb.evaluate(model, mteb.get_tasks(tasks=["STSBenchmark", "SciFact"]))

It follows mteb's ``EncoderProtocol`` (mteb 2: ``encode(DataLoader of {"text": [...]} batches, *,
task_metadata, hf_split, hf_subset, prompt_type)``) and also accepts mteb 1's plain list of sentences.
Queries get the query prompt, everything else the document prompt. mteb itself is not a dependency;
it is imported only for :attr:`MTEBEncoder.mteb_model_meta`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ..config import VECTORS, field_names
from ..embedder import KVEmbedder
from ..prompts import Role


def _texts(inputs: Any) -> list[str]:
    """Flatten mteb's inputs: a string, a list of strings, or an iterable of ``{"text": [...]}`` batches."""
    if isinstance(inputs, str):
        return [inputs]
    texts: list[str] = []
    for item in inputs if isinstance(inputs, Iterable) else [inputs]:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and "text" in item:
            batch = item["text"]
            texts.extend([batch] if isinstance(batch, str) else [str(t) for t in batch])
        else:
            raise TypeError(
                f"cannot read texts from an input of type {type(item).__name__}; expected strings or batches "
                "with a 'text' field (mteb's DataLoader[BatchedInput])"
            )
    return texts


def _role(prompt_type: Any) -> Role:
    value = getattr(prompt_type, "value", prompt_type)
    return "query" if value == "query" else "document"


def _unit_rows(x: Any, dim: int) -> torch.Tensor:
    """``(n, dim)`` float32 rows of unit length, from a numpy array or tensor of ``(n, dim)`` or ``(dim,)``."""
    rows = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float32))
    return torch.nn.functional.normalize(rows.float().reshape(-1, dim), dim=-1)


class MTEBEncoder:
    """mteb ``EncoderProtocol`` over a :class:`KVEmbedder` (loaded from ``model_name`` or given).

    ``options`` are :class:`~kvembed_rag.config.KVEmbedConfig` fields (``method``, ``layers``, ``dtype`` ...).
    """

    def __init__(
        self,
        model_name: str = "default",
        revision: str | None = None,
        *,
        device: str | None = None,
        embedder: KVEmbedder | None = None,
        **options: Any,
    ) -> None:
        self.model_name = model_name
        self.revision = revision
        self.embedder = embedder or KVEmbedder.from_pretrained(model_name, revision=revision, device=device, **options)

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        task_name: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """``(n, dim)`` float32 unit vectors; ``prompt_type="query"`` selects the query prompt."""
        texts = _texts(inputs)
        if not texts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return self.embedder.encode(texts, _role(prompt_type), show_progress=kwargs.get("show_progress_bar"))

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity matrix ``(n1, n2)``."""
        return _unit_rows(embeddings1, self.embedder.dim) @ _unit_rows(embeddings2, self.embedder.dim).T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity of corresponding rows ``(n,)``."""
        a, b = _unit_rows(embeddings1, self.embedder.dim), _unit_rows(embeddings2, self.embedder.dim)
        return (a * b).sum(dim=-1)

    def meta_fields(self) -> dict[str, Any]:
        """What mteb's ``ModelMeta`` records about this model, as plain values."""
        e = self.embedder
        # the resolved options that determine the vectors: MTEBEncoder(name, **loader_kwargs) rebuilds them
        config = e.config.to_dict()
        vector_options = {name: config[name] for name in field_names(VECTORS)}
        parameters = sum(p.numel() for p in e.model.parameters())
        suffix = "" if e.method == "kv" else f"-{e.method}"
        return {
            "loader": MTEBEncoder,
            "loader_kwargs": vector_options,
            "name": f"kvembed-rag/{e.source.spec}{suffix}",
            "revision": self.revision or e.source.identity[:12] or None,
            "release_date": None,
            "languages": None,
            "n_parameters": parameters,
            "memory_usage_mb": round(parameters * e.model.dtype.itemsize / 2**20, 1),
            "max_tokens": e.max_length,
            "embed_dim": e.dim,
            "license": None,
            "open_weights": True,
            "public_training_code": None,
            "public_training_data": None,
            "similarity_fn_name": "cosine",
            "framework": ["PyTorch"],
            "reference": "https://arxiv.org/abs/2601.01046",
            "use_instructions": True,
            "training_datasets": set(),  # training-free
            "adapted_from": str(e.source.spec),
            "experiment_kwargs": vector_options,
        }

    @property
    def mteb_model_meta(self) -> Any:
        """mteb's ``ModelMeta`` (needs ``pip install mteb``); fields unknown to the installed mteb are dropped."""
        try:
            from mteb.models.model_meta import ModelMeta
        except ImportError as exc:
            raise ImportError("mteb_model_meta needs mteb: pip install mteb") from exc
        known = getattr(ModelMeta, "model_fields", None)
        fields = self.meta_fields()
        return ModelMeta(**({k: v for k, v in fields.items() if k in known} if known else fields))


__all__ = ["MTEBEncoder"]
