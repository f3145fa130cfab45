"""``KVEmbedder``: a frozen decoder-only LLM as a text embedder, in one forward pass."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, overload

import numpy as np
import torch

from . import __version__
from .attention import PLAN_KWARG, ReroutingPlan, build_plan, probe_dispatch, resolve_backend
from .errors import KVEmbedError
from .methods import (
    MethodSpec,
    default_window,
    get_method,
    token_prepending_layers,
    validate_layers,
)
from .models import ModelSource, load_model, load_tokenizer, pick_device, pick_dtype, resolve
from .pooling import POOLINGS, pool
from .prompts import PromptTemplate, Role
from .tokenization import EncodedText, encode_text

logger = logging.getLogger(__name__)

DEFAULT_BIAS = 1.0  # logit bias on the re-routed slot unless given or tuned
DEFAULT_BATCH_TOKENS = 16_384
DEFAULT_MAX_LENGTH = 4096


class TruncationWarning(UserWarning):
    """Some inputs were longer than ``max_length`` and lost their tail."""


class EmbeddingMemoryError(KVEmbedError, MemoryError):
    """A single text does not fit in memory even in a batch of one."""


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    message = str(exc).lower()
    return "out of memory" in message or "can't allocate memory" in message or "cannot allocate memory" in message


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _decoder_layers(model: torch.nn.Module, num_layers: int) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (``model.layers`` for Llama-style bases)."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers) == num_layers:
        return layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers:
            return module
    raise AttributeError(f"cannot find the {num_layers} decoder layers of {type(model).__name__}")


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a string or a sequence of strings; got {type(texts).__name__}")
    items = list(texts)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"texts[{i}] is {type(item).__name__}, not str; convert or drop it before encoding")
    return items


class KVEmbedder:
    """Turn a frozen decoder-only LLM into a text embedder (KV-Embedding and its baselines).

    Build one with :meth:`from_pretrained`. ``encode*`` return L2-normalised float32 arrays; a single string
    gives shape ``(dim,)``, a list ``(n, dim)``. Calls from many threads are safe (one lock guards the
    tokenizer and the model).

    Empty or whitespace-only strings are embedded like any other text: the prompt with nothing in its
    ``{text}`` slot. With a method that has no prompt (``last``, ``mean``) and a tokenizer that adds no
    BOS, such a string becomes the tokenizer's BOS/EOS/PAD token, so every input gets a finite vector.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        method: str = "kv",
        layers: Sequence[int] | str | None = "auto",
        bias: float | None = None,
        pooling: str | None = None,
        prompts: PromptTemplate | dict[str, str] | str | None = None,
        max_length: int | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        padding_side: str | None = None,
        source: ModelSource | None = None,
        show_progress: bool = False,
    ) -> None:
        self.model: Any = model  # a transformers PreTrainedModel (typed loosely: its config is dynamic)
        self.tokenizer = tokenizer
        config: Any = getattr(model, "config", None)
        self.num_layers = int(config.num_hidden_layers)
        self.spec: MethodSpec = get_method(method)
        self.method = self.spec.name
        self.layer_selection: Any = None  # a LayerSelection when layers="auto" chose them
        self.bias = DEFAULT_BIAS if bias is None else float(bias)
        self.tuned: dict[str, Any] | None = None  # the saved `kvembed-rag tune` winner, when layers="auto" used it
        self.pooling = pooling or self.spec.pooling
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {self.pooling!r}")
        self.prompts = PromptTemplate.coerce(prompts, self.spec.prompts)
        model_max = getattr(config, "max_position_embeddings", None)
        if max_length is None:
            max_length = min(DEFAULT_MAX_LENGTH, model_max) if isinstance(model_max, int) else DEFAULT_MAX_LENGTH
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int; got {max_length!r}")
        if isinstance(model_max, int) and max_length > model_max:
            raise ValueError(
                f"max_length={max_length} exceeds the model's max_position_embeddings={model_max}; "
                f"pass max_length<={model_max}"
            )
        self.max_length = max_length
        if not isinstance(batch_tokens, int) or batch_tokens < 1:
            raise ValueError(f"batch_tokens must be a positive int; got {batch_tokens!r}")
        self.batch_tokens = batch_tokens
        self.padding_side = padding_side or getattr(tokenizer, "padding_side", "right") or "right"
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right'; got {self.padding_side!r}")
        self.source = source or ModelSource(getattr(config, "_name_or_path", "") or type(model).__name__, "object", "")
        self.show_progress = show_progress
        self.pad_id = next(
            (
                v
                for v in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
                if isinstance(v, int)
            ),
            0,
        )
        self._tp_layers = token_prepending_layers(self.num_layers) if self.spec.token_prepending else []
        self._placeholder_id = next(
            (v for v in (getattr(tokenizer, "unk_token_id", None), self.pad_id) if isinstance(v, int)), 0
        )
        self._decoder = _decoder_layers(model, self.num_layers)
        # one lock per model, not per embedder: embedders built over the same backbone (other methods, the
        # benchmark) must not run forwards, token-prepending hooks or the tokenizer concurrently
        lock = getattr(model, "_kvembed_lock", None)
        if lock is None:
            lock = threading.RLock()
            vars(model)["_kvembed_lock"] = lock
        self._lock = lock
        for role in ("document", "query"):
            self.tokenize([""], role)  # fail now, not mid-corpus, if the prompt alone exceeds max_length
        self.layers = default_window(self.num_layers)  # placeholder while "auto" runs its calibration pass
        self.layers = self._resolve_layers(layers)
        if self.tuned is not None and bias is None:
            self.bias = float(self.tuned["bias"])
        if self.tuned is not None and pooling is None and self.tuned.get("pooling") in POOLINGS:
            self.pooling = str(self.tuned["pooling"])

    def _resolve_layers(self, layers: Sequence[int] | str | None) -> list[int]:
        """'auto': the tuned window if `kvembed-rag tune` saved one, else the ID-minimum window (cached);
        'id': the ID-minimum window; 'default': the 20%-depth window; or an explicit, validated list."""
        if layers is None or layers in ("auto", "id"):
            if not self.spec.reroute:  # only kv re-routes: do not spend a calibration pass on other methods
                return default_window(self.num_layers)
            from .layer_selection import select_layers
            from .tuning import load_tuned

            self.tuned = load_tuned(self) if layers != "id" else None
            if self.tuned is not None:  # `kvembed-rag tune` chose a window (and bias) for this model
                return list(self.tuned["layers"])

            self.layer_selection = select_layers(self)
            return list(self.layer_selection.layers)
        if layers == "default":
            return default_window(self.num_layers)
        if isinstance(layers, str):
            raise ValueError(f"layers must be 'auto', 'id', 'default' or a list of layer indices; got {layers!r}")
        return validate_layers(layers, self.num_layers)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str] = "default",
        *,
        method: str = "kv",
        layers: Sequence[int] | str | None = "auto",
        bias: float | None = None,
        pooling: str | None = None,
        prompts: PromptTemplate | dict[str, str] | str | None = None,
        max_length: int | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        padding_side: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        show_progress: bool = False,
    ) -> KVEmbedder:
        """Load ``model`` (``"default"``, a hub id, a local directory or a ``.gguf`` file) as an embedder.

        ``attn_implementation`` is ``"sdpa"`` (fast) or ``"eager"`` (reference); flash and flex kernels are
        refused because they have no place for the prefix slot's bias. ``trust_remote_code`` stays off
        unless you turn it on.
        """
        backend = resolve_backend(attn_implementation)
        location, source = resolve(model, revision=revision, trust_remote_code=trust_remote_code)
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(dtype, torch_device)
        tokenizer = load_tokenizer(location, revision=revision, trust_remote_code=trust_remote_code)
        backbone = load_model(
            location,
            attn_implementation=backend,
            device=torch_device,
            dtype=torch_dtype,
            revision=revision,
            trust_remote_code=trust_remote_code,
            safetensors_only=source.kind in ("default", "gguf"),
        )
        probe_dispatch(backbone, int(getattr(backbone.config, "num_hidden_layers", 0)))
        return cls(
            backbone,
            tokenizer,
            method=method,
            layers=layers,
            bias=bias,
            pooling=pooling,
            prompts=prompts,
            max_length=max_length,
            batch_tokens=batch_tokens,
            padding_side=padding_side,
            source=source,
            show_progress=show_progress,
        )

    def variant(self, **changes: Any) -> KVEmbedder:
        """A new embedder over the same loaded backbone with some options changed (no reload).

        ``changes`` are constructor options (``method``, ``layers``, ``bias``, ``pooling``, ``prompts``,
        ``max_length``, ``batch_tokens``, ``padding_side``, ``show_progress``). A method change resets the
        pooling and prompts to that method's own unless they are given too; the re-routed layers carry over.
        """
        unknown = set(changes) - _VARIANT_OPTIONS
        if unknown:
            raise TypeError(f"variant() cannot change {sorted(unknown)}; it can change {sorted(_VARIANT_OPTIONS)}")
        method_changed = "method" in changes and get_method(changes["method"]).name != self.method
        options: dict[str, Any] = dict(
            method=self.method,
            layers=self.layers,
            bias=self.bias,
            pooling=None if method_changed else self.pooling,
            prompts=None if method_changed else self.prompts,
            max_length=self.max_length,
            batch_tokens=self.batch_tokens,
            padding_side=self.padding_side,
            show_progress=self.show_progress,
        )
        options.update(changes)
        return KVEmbedder(self.model, self.tokenizer, source=self.source, **options)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Embedding width (the backbone's hidden size)."""
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def describe(self) -> dict[str, Any]:
        """Everything that determines the vectors, JSON-serialisable (recorded in indexes and caches)."""
        config: Any = self.model.config
        return {
            "package": "kvembed-rag",
            "version": __version__,
            "model": self.source.to_dict(),
            "architecture": type(self.model).__name__,
            "model_type": getattr(config, "model_type", None),
            "num_layers": self.num_layers,
            "dim": self.dim,
            "dtype": str(self.dtype).removeprefix("torch."),
            "method": self.method,
            "layers": list(self.layers) if self.spec.reroute else [],
            "bias": self.bias if self.spec.reroute else None,
            "token_prepending_layers": list(self._tp_layers),
            "pooling": self.pooling,
            "prompts": self.prompts.to_dict(),
            "max_length": self.max_length,
        }

    to_dict = describe

    @property
    def fingerprint(self) -> str:
        """A short hash of :meth:`describe` minus the package version: equal fingerprints, comparable vectors."""
        payload = {k: v for k, v in self.describe().items() if k != "version"}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"KVEmbedder(model={self.source.spec!r}, method={self.method!r}, layers={self.layers}, "
            f"bias={self.bias}, pooling={self.pooling!r}, max_length={self.max_length}, dim={self.dim})"
        )

    # ------------------------------------------------------------------ encoding
    @overload
    def encode(
        self,
        texts: str | Sequence[str],
        role: Role | None = None,
        *,
        prompt_name: str | None = None,
        convert_to_tensor: Literal[False] = False,
        convert_to_numpy: Literal[True] = True,
        **options: Any,
    ) -> np.ndarray: ...

    @overload
    def encode(
        self,
        texts: str | Sequence[str],
        role: Role | None = None,
        *,
        prompt_name: str | None = None,
        convert_to_tensor: Literal[True],
        convert_to_numpy: bool = True,
        **options: Any,
    ) -> torch.Tensor: ...

    @overload
    def encode(
        self,
        texts: str | Sequence[str],
        role: Role | None = None,
        *,
        prompt_name: str | None = None,
        convert_to_tensor: bool = False,
        convert_to_numpy: bool = True,
        **options: Any,
    ) -> np.ndarray | torch.Tensor | list[torch.Tensor]: ...

    def encode(
        self,
        texts: str | Sequence[str],
        role: Role | None = None,
        *,
        prompt_name: str | None = None,
        convert_to_tensor: bool = False,
        convert_to_numpy: bool = True,
        **options: Any,
    ) -> np.ndarray | torch.Tensor | list[torch.Tensor]:
        """Embed texts as ``role`` ("document" or "query"): float32, unit norm, ``(n, dim)`` or ``(dim,)``.

        Also takes sentence-transformers' keywords (``prompt_name``, ``batch_size``, ``show_progress_bar``,
        ``normalize_embeddings``, ``convert_to_tensor``, ``convert_to_numpy``, ``precision``, ``device``,
        ``output_value``, ``truncate_dim``); see :meth:`_encode_options`. Options of this package:
        ``batch_tokens``, ``show_progress``, and for int8/uint8 ``ranges`` / ``calibration_embeddings``.
        """
        single = isinstance(texts, str)
        items: list[str] = [texts] if isinstance(texts, str) else _check_texts(texts)
        chosen_role = _role_from(role, prompt_name)
        self.prompts.for_role(chosen_role)  # validates the role before any work
        settings = self._encode_options(options)
        vectors = self._encode(items, chosen_role, settings["batch_tokens"] or self.batch_tokens, settings["progress"])
        return _finish(
            vectors, single, settings, convert_to_tensor=convert_to_tensor, convert_to_numpy=convert_to_numpy
        )

    def encode_documents(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray:
        """Embed passages to be retrieved (the document prompt)."""
        return self.encode(texts, "document", **kwargs)

    def encode_queries(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray:
        """Embed search queries (the query prompt)."""
        return self.encode(texts, "query", **kwargs)

    def tokenize(self, texts: Sequence[str], role: Role = "document") -> list[EncodedText]:
        """Prompted, truncated token ids per text (what :meth:`encode` feeds the model)."""
        reserve = 1 if self.spec.token_prepending else 0
        with self._lock:  # fast tokenizers are not thread-safe ("Already borrowed")
            encoded = [
                encode_text(
                    self.tokenizer,
                    text,
                    self.prompts,
                    role,
                    self.max_length,
                    pool_last_copy=self.spec.pool_last_copy,
                    reserve=reserve,
                )
                for text in texts
            ]
        if reserve:
            for item in encoded:
                item.ids.insert(item.text_start, self._placeholder_id)
                item.pool_end += 1
        return encoded

    def last_token_states(self, texts: Sequence[str], role: Role = "document") -> np.ndarray:
        """``(L, n, H)`` float32: each layer's output at each prompted text's last token, without re-routing."""
        items = _check_texts(texts)
        encoded = self.tokenize(items, role)
        out = np.empty((self.num_layers, len(items), self.dim), dtype=np.float32)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
        for batch in _token_batches(order, [len(e.ids) for e in encoded], self.batch_tokens):
            ids, mask, _ = self._pad([encoded[i] for i in batch])
            ids, mask = ids.to(self.device), mask.to(self.device)
            plan = build_plan(mask, layers=(), bias=self.bias)
            assert plan.last_index is not None
            rows = torch.arange(len(batch), device=mask.device)
            with self._lock, torch.inference_mode():
                hidden = self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0),
                    output_hidden_states=True,
                    **{PLAN_KWARG: plan},
                ).hidden_states  # L + 1 tensors (B, T, H): embeddings, then each layer's output
                for layer in range(self.num_layers):
                    out[layer, batch] = hidden[layer + 1][rows, plan.last_index].float().cpu().numpy()
        return out

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of ``text`` alone (no prompt, no special tokens)."""
        with self._lock:
            encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in encoding["offset_mapping"]]

    def _encode(self, texts: list[str], role: Role, batch_tokens: int, show_progress: bool | None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encoded = self.tokenize(texts, role)
        self._warn_truncation(encoded)
        # longest first (as sentence-transformers does): the first batch shows the peak memory at once
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
        out = np.empty((len(encoded), self.dim), dtype=np.float32)
        progress = self._progress(len(encoded), show_progress)
        for batch in _token_batches(order, [len(e.ids) for e in encoded], batch_tokens):
            out[batch] = self._forward_splitting(batch, encoded)
            if progress is not None:
                progress.update(len(batch))
        if progress is not None:
            progress.close()
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:
            raise FloatingPointError(
                f"non-finite embeddings for inputs {bad[:10].tolist()}: the backbone overflowed in {self.dtype}; "
                "try dtype='float32'"
            )
        return out

    def _forward_splitting(self, batch: list[int], encoded: list[EncodedText]) -> np.ndarray:
        """Forward a batch; on out-of-memory, halve it and retry, down to one text, then name that text."""
        try:
            return self._forward([encoded[i] for i in batch])
        except (MemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc):
                raise
            _release_memory(self.device)
            if len(batch) == 1:
                raise EmbeddingMemoryError(
                    f"out of memory embedding texts[{batch[0]}] ({len(encoded[batch[0]].ids)} tokens) even on its own "
                    f"on {self.device} in {self.dtype}; lower max_length, use dtype='bfloat16', or another device"
                ) from exc
            logger.warning("out of memory on a batch of %d texts; retrying it in halves", len(batch))
            half = len(batch) // 2
            return np.concatenate(
                [self._forward_splitting(batch[:half], encoded), self._forward_splitting(batch[half:], encoded)]
            )

    def _progress(self, total: int, show: bool | None) -> Any:
        if not (self.show_progress if show is None else show):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"embedding ({self.method})", unit="text")

    def _warn_truncation(self, encoded: list[EncodedText]) -> None:
        cut = [e.truncated_by for e in encoded if e.truncated_by]
        if cut:
            message = (
                f"{len(cut)} of {len(encoded)} inputs were longer than max_length={self.max_length} tokens and were "
                f"truncated (by up to {max(cut)} tokens, {sum(cut)} in total). Raise max_length or split long "
                "documents into chunks."
            )
            logger.warning(message)
            warnings.warn(message, TruncationWarning, stacklevel=4)

    def _pad(self, batch: list[EncodedText]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, T)`` ids, ``(B, T)`` padding mask and ``(B, T)`` pooling mask, padded on ``padding_side``."""
        width = max(len(e.ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        pool_mask = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, item in enumerate(batch):
            offset = width - len(item.ids) if self.padding_side == "left" else 0
            ids[row, offset : offset + len(item.ids)] = torch.tensor(item.ids, dtype=torch.long)
            mask[row, offset : offset + len(item.ids)] = 1
            pool_mask[row, offset + item.pool_start : offset + item.pool_end] = True
        return ids, mask, pool_mask

    def _forward(self, batch: list[EncodedText]) -> np.ndarray:
        ids, mask, pool_mask = self._pad(batch)
        device = self.device
        ids, mask, pool_mask = ids.to(device), mask.to(device), pool_mask.to(device)
        # positions count real tokens only, so a left-padded row sees the same RoPE phases as alone
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        plan = build_plan(
            mask,
            layers=self.layers if self.spec.reroute else (),
            bias=self.bias,
            bidirectional=self.spec.bidirectional,
        )
        with self._lock, torch.inference_mode(), self._token_prepending(batch, mask):
            hidden = self.model(
                input_ids=ids, attention_mask=mask, position_ids=position_ids, **{PLAN_KWARG: plan}
            ).last_hidden_state  # (B, T, H)
            assert plan.last_index is not None
            vectors = pool(hidden, self.pooling, plan.last_index, pool_mask)  # (B, H) float32
        return vectors.cpu().numpy()

    @contextmanager
    def _token_prepending(self, batch: list[EncodedText], mask: torch.Tensor) -> Iterator[None]:
        """Forward pre-hooks that overwrite the placeholder with the previous layer's last-token state."""
        if not self._tp_layers:
            yield
            return
        width = mask.shape[1]
        offsets = [width - len(e.ids) if self.padding_side == "left" else 0 for e in batch]
        starts = [o + e.text_start for o, e in zip(offsets, batch, strict=True)]
        slots = torch.tensor(starts, device=mask.device)  # (B,)
        plan = build_plan(mask, layers=(), bias=0.0)
        assert plan.last_index is not None
        last = plan.last_index
        rows = torch.arange(len(batch), device=mask.device)

        def overwrite(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            hidden = args[0] if args else kwargs["hidden_states"]  # (B, T, H): the previous layer's output
            hidden = hidden.clone()
            hidden[rows, slots] = hidden[rows, last]
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        handles = [self._decoder[i].register_forward_pre_hook(overwrite, with_kwargs=True) for i in self._tp_layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ------------------------------------------------------------------ sentence-transformers' vocabulary
    # Code written for sentence_transformers.SentenceTransformer runs on a KVEmbedder unchanged: the names
    # below mirror its v3-v5 API. Vectors are always unit-norm (normalize_embeddings only accepts the fact).
    similarity_fn_name = "cosine"

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


def _role_from(role: str | None, prompt_name: str | None) -> Role:
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


def _finish(
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


#: from_pretrained options the framework adapters expose as plain fields (besides the model itself)
ADAPTER_OPTIONS = ("method", "layers", "bias", "pooling", "prompts", "max_length", "batch_tokens", "device", "dtype")

_VARIANT_OPTIONS = {*ADAPTER_OPTIONS, "padding_side", "show_progress"} - {"device", "dtype"}

_SHARED: dict[str, KVEmbedder] = {}
_SHARED_LOCK = threading.Lock()


def shared_embedder(model: str | os.PathLike[str] = "default", **options: Any) -> KVEmbedder:
    """One loaded :class:`KVEmbedder` per (model, options) per process, reused by every adapter instance.

    Framework adapters are constructed often (per chain, per worker, after unpickling); loading a model
    each time would cost seconds and memory. The embedder is thread-safe, so sharing it is too.
    """
    key = json.dumps({"model": os.fspath(model), **options}, sort_keys=True, default=repr)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = KVEmbedder.from_pretrained(model, **options)
        return _SHARED[key]


def _token_batches(order: list[int], lengths: list[int], batch_tokens: int) -> Iterator[list[int]]:
    """Consecutive runs of ``order`` (longest first) whose padded size ``rows x longest`` fits the budget."""
    batch: list[int] = []
    longest = 0
    for index in order:
        longest_if_added = max(longest, lengths[index])
        if batch and longest_if_added * (len(batch) + 1) > batch_tokens:
            yield batch
            batch, longest_if_added = [], lengths[index]
        batch.append(index)
        longest = longest_if_added
    if batch:
        yield batch


__all__ = ["KVEmbedder", "ReroutingPlan", "TruncationWarning"]
