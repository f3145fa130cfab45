"""``KVEmbedder``: a frozen decoder-only LLM as a text embedder, in one forward pass."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch

from . import __version__
from .attention import (
    ATTN_SDPA,
    PLAN_KWARG,
    ReroutingPlan,
    build_plan,
    check_merged_slot_kernel,
    probe_dispatch,
    resolve_backend,
)
from .config import (
    DEFAULT_BIAS,
    DEFAULT_MAX_LENGTH,
    LOAD,
    RUNTIME,
    VECTORS,
    KVEmbedConfig,
    coerce_config,
    field_names,
    is_stats_path,
)
from .errors import ConfigError, EmbeddingMemoryError, TruncationWarning
from .layer_selection import default_window, validate_layers
from .loading import ModelSource, load_model, load_tokenizer, pick_device, pick_dtype, resolve
from .methods import MethodSpec, get_method, token_prepending_layers
from .pooling import POOLINGS, pool
from .postprocess import PostprocessStats, parse_spec, spec_text
from .postprocess import apply as apply_postprocess
from .postprocess import fit as fit_postprocess
from .prompts import PromptTemplate, Role
from .tokenization import EncodedText, encode_text
from .weight_quantization import weights_description

logger = logging.getLogger(__name__)


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

    Build one with :meth:`from_pretrained` (options: :class:`~kvembed_rag.config.KVEmbedConfig`), or over an
    already loaded transformers model with ``KVEmbedder(model, tokenizer, config)``. ``encode*`` return
    L2-normalised float32 arrays; a single string gives shape ``(dim,)``, a list ``(n, dim)``. Calls from many
    threads are safe (one lock per backbone guards the tokenizer and the model).

    Empty or whitespace-only strings are embedded like any other text: the prompt with nothing in its
    ``{text}`` slot. With a method that has no prompt (``last``, ``mean``) and a tokenizer that adds no
    BOS, such a string becomes the tokenizer's BOS/EOS/PAD token, so every input gets a finite vector.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        config: KVEmbedConfig | Mapping[str, Any] | None = None,
        *,
        source: ModelSource | None = None,
        postprocess_stats: PostprocessStats | None = None,
        **options: Any,
    ) -> None:
        """``config`` (or keyword options) is resolved against ``model`` first, then the embedder is built.

        Resolution is complete before any attribute is set: ``layers="auto"`` runs its calibration pass on a
        separate, fully built embedder with the default window (see :func:`resolve_config`), and the
        post-processing statistics are read (shipped or cached) or fitted the same way
        (:func:`resolve_postprocess`). ``postprocess_stats`` gives fitted statistics directly (a corpus fit).
        A ``postprocess`` that names a statistics file becomes an absolute path in :attr:`config`, so that the
        configuration an index records rebuilds this embedder from any working directory.
        """
        model_config: Any = getattr(model, "config", None)
        source = source or ModelSource(getattr(model_config, "_name_or_path", "") or type(model).__name__, "object", "")
        if config is None and "model" not in options:
            options["model"] = source.spec or "object"
        requested = coerce_config(config, **options)
        if requested.is_resolved:
            resolved, provenance, selection = check_resolved(model, tokenizer, requested), None, None
        else:
            resolved, provenance, selection = resolve_config(model, tokenizer, requested, source=source)
        if is_stats_path(resolved.postprocess):
            resolved = resolved.replace(postprocess=str(Path(resolved.postprocess).expanduser().resolve()))
        if postprocess_stats is not None:
            how = "given"
        else:
            postprocess_stats, how = resolve_postprocess(model, tokenizer, resolved, source=source)
        if resolved.postprocess == "auto":  # the resolved config names what "auto" chose
            chosen = "none" if postprocess_stats is None else spec_text(postprocess_stats.spec)
            resolved = resolved.replace(postprocess=chosen)
            how = "shipped-default" if postprocess_stats is not None else "none"
        self.model: Any = model  # a transformers PreTrainedModel (typed loosely: its config is dynamic)
        self.tokenizer = tokenizer
        self.source = source
        self.config: KVEmbedConfig = resolved
        self.num_layers = int(model_config.num_hidden_layers)
        self.spec: MethodSpec = get_method(resolved.method)
        #: how each resolved option was chosen ("given", "method", "model", "intrinsic-dimension", "tuned" ...)
        self.provenance: dict[str, str] = provenance or {name: "given" for name in ("layers", "bias", "pooling")}
        self.provenance.setdefault("postprocess", how)  # "tuned" when resolve_config took the tuned one
        #: the fitted isotropy calibration applied to every vector (None: config.postprocess == "none")
        self.postprocess_stats: PostprocessStats | None = postprocess_stats
        if postprocess_stats is not None and postprocess_stats.in_dim != int(model_config.hidden_size):
            raise ConfigError(
                f"post-processing statistics for {postprocess_stats.in_dim}-dim vectors cannot apply to this "
                f"{model_config.hidden_size}-dim model"
            )
        self.layer_selection: Any = selection  # the LayerSelection when layers="auto" chose the window
        self.pad_id = _pad_id(tokenizer)
        self._tp_layers = token_prepending_layers(self.num_layers) if self.spec.token_prepending else []
        self._placeholder_id = next(
            (v for v in (getattr(tokenizer, "unk_token_id", None), self.pad_id) if isinstance(v, int)), 0
        )
        self._decoder = _decoder_layers(model, self.num_layers)
        self._lock = backbone_lock(model)
        for role in ("document", "query"):
            self.tokenize([""], role)  # fail now, not mid-corpus, if the prompt alone exceeds max_length

    # ------------------------------------------------------------------ resolved options (read-only views)
    @property
    def method(self) -> str:
        return self.config.method

    @property
    def layers(self) -> list[int]:
        """The re-routed layers (for methods that do not re-route: the window they would carry to ``kv``)."""
        assert isinstance(self.config.layers, tuple)
        return list(self.config.layers)

    @property
    def bias(self) -> float:
        assert self.config.bias is not None
        return self.config.bias

    @property
    def pooling(self) -> str:
        assert self.config.pooling is not None
        return self.config.pooling

    @property
    def prompts(self) -> PromptTemplate:
        assert self.config.prompts is not None
        return self.config.prompts

    @property
    def max_length(self) -> int:
        assert self.config.max_length is not None
        return self.config.max_length

    @property
    def batch_tokens(self) -> int:
        return self.config.batch_tokens

    @property
    def padding_side(self) -> str:
        assert self.config.padding_side is not None
        return self.config.padding_side

    @property
    def show_progress(self) -> bool:
        return self.config.show_progress

    @property
    def tuned(self) -> bool:
        """True when the window came from the store of tuned defaults (``layers="tuned"``)."""
        return self.provenance.get("layers") == "tuned"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model: str | os.PathLike[str] | KVEmbedConfig = "default", **options: Any) -> KVEmbedder:
        """Load ``model`` (``"default"``, a hub id, a local directory or a ``.gguf`` file) as an embedder.

        ``options`` are the fields of :class:`~kvembed_rag.config.KVEmbedConfig` (``method``, ``layers``,
        ``bias``, ``pooling``, ``prompts``, ``max_length``, ``device``, ``dtype``, ...); ``model`` may also be a
        whole ``KVEmbedConfig``. ``dtype`` ``None``/``"auto"`` (default): bfloat16 on CUDA and on CPUs where
        native bf16 is present and measured faster, else float32 (see :mod:`kvembed_rag.hardware`).
        ``weights="int8"`` quantises the Linear layers to int8 (CPU, float32 activations; see
        :mod:`kvembed_rag.weight_quantization`). ``model_kwargs`` go to transformers' ``from_pretrained``
        (``device_map``, ``quantization_config``, ``low_cpu_mem_usage`` ...) for backbones that need them.
        ``attn_implementation`` is ``"sdpa"`` (fast) or ``"eager"`` (reference); flash and flex kernels are
        refused because they have no place for the prefix slot's bias.
        """
        from .weight_quantization import check_weights, quantize_linear_layers

        if isinstance(model, KVEmbedConfig):
            config = coerce_config(model, **options)
        else:
            config = coerce_config(None, model=os.fspath(model), **options)
        backend = resolve_backend(config.attn_implementation)
        weight_format = check_weights(config.weights)
        location, source = resolve(config.model, revision=config.revision, trust_remote_code=config.trust_remote_code)
        torch_device = pick_device(config.device)
        dtype = config.dtype
        if weight_format == "int8":
            if torch_device.type != "cpu":
                raise ConfigError(f"weights='int8' runs on the CPU only; got device={torch_device}. Use device='cpu'.")
            if dtype not in (None, "auto") and pick_dtype(dtype, torch_device) != torch.float32:
                raise ConfigError(f"weights='int8' computes in float32 around the int8 products; got dtype={dtype!r}")
            dtype = "float32"
        torch_dtype = pick_dtype(dtype, torch_device)
        tokenizer = load_tokenizer(location, revision=config.revision, trust_remote_code=config.trust_remote_code)
        backbone = load_model(
            location,
            attn_implementation=backend,
            device=torch_device,
            dtype=torch_dtype,
            revision=config.revision,
            trust_remote_code=config.trust_remote_code,
            safetensors_only=source.kind in ("default", "gguf"),
            model_kwargs=dict(config.model_kwargs) if config.model_kwargs else None,
        )
        if weight_format == "int8":
            quantize_linear_layers(backbone)
        probe_dispatch(backbone, int(getattr(backbone.config, "num_hidden_layers", 0)))
        if backend == ATTN_SDPA:
            check_merged_slot_kernel(backbone)
        # the resolved load options are recorded: the index restores the same dtype on another machine
        config = config.replace(dtype=str(torch_dtype).removeprefix("torch."), device=str(torch_device))
        return cls(backbone, tokenizer, config, source=source)

    def variant(self, **changes: Any) -> KVEmbedder:
        """A new embedder over the same loaded backbone with some options changed (no reload).

        ``changes`` are options of the ``vectors`` and ``runtime`` groups of the config. A method change resets
        the pooling and prompts to that method's own unless they are given too; the layer window carries over.
        """
        fixed = set(changes) & set(field_names(LOAD))
        if fixed:
            raise TypeError(
                f"variant() cannot change {sorted(fixed)} (they load the backbone): use from_pretrained; it can "
                f"change {sorted(field_names(VECTORS) + field_names(RUNTIME))}"
            )
        unknown = set(changes) - set(field_names())
        if unknown:
            raise TypeError(f"variant() got unknown options {sorted(unknown)}; options are {', '.join(field_names())}")
        base = self.config
        if "method" in changes and get_method(changes["method"]).name != self.method:
            base = base.replace(pooling=None, prompts=None)
        # statistics given directly (a corpus fit) stay valid while only runtime options change
        keep = self.provenance.get("postprocess") == "given" and set(changes) <= set(field_names(RUNTIME))
        return KVEmbedder(
            self.model,
            self.tokenizer,
            base.replace(**changes),
            source=self.source,
            postprocess_stats=self.postprocess_stats if keep else None,
        )

    def fit_postprocess(
        self,
        texts: Sequence[str],
        spec: str | None = None,
        *,
        role: Role = "document",
        raw_vectors: np.ndarray | None = None,
    ) -> KVEmbedder:
        """This embedder with its post-processing fitted on ``texts`` (e.g. your own corpus) instead of the
        shipped calibration texts: the same statistics, fitted on the ``role`` vectors before post-processing.

        ``spec`` defaults to the config's ``postprocess`` (``"center"`` if that is ``"none"``). The result's
        ``describe()`` records the statistics' fingerprint, so an index built with it refuses other embedders.
        ``raw_vectors`` ``(len(texts), hidden)``: the texts' vectors before post-processing, already computed with
        this configuration (:meth:`raw`), so that nothing is embedded again.
        """
        if spec:
            text = spec
        elif self.postprocess_stats is not None:  # e.g. statistics read from a file: refit the same kind
            text = spec_text(self.postprocess_stats.spec)
        else:
            text = "center"
        config = self.config.replace(postprocess=text)
        checked = _check_texts(texts)
        if raw_vectors is None:
            raw_vectors = self.raw().encode(checked, role)
        elif raw_vectors.shape != (len(checked), self.hidden_size):
            raise ValueError(
                f"raw_vectors must have shape {(len(checked), self.hidden_size)} (one raw vector per text); "
                f"got {raw_vectors.shape}"
            )
        stats = fit_postprocess(raw_vectors, parse_spec(config.postprocess))
        return KVEmbedder(self.model, self.tokenizer, config, source=self.source, postprocess_stats=stats)

    def raw(self) -> KVEmbedder:
        """This embedder without post-processing (the same backbone, ``postprocess="none"``): its vectors are
        the ones post-processing statistics are fitted on and applied to (:meth:`apply_postprocess`)."""
        if self.postprocess_stats is None:
            return self
        return KVEmbedder(self.model, self.tokenizer, self.config.replace(postprocess="none"), source=self.source)

    def apply_postprocess(self, raw_vectors: np.ndarray) -> np.ndarray:
        """This embedder's post-processing applied to vectors of :meth:`raw` ``(n, hidden)``: row by row, so the
        result equals what :meth:`encode` gives for the same texts (up to batching round-off)."""
        if self.postprocess_stats is None:
            return np.asarray(raw_vectors, dtype=np.float32)
        return apply_postprocess(raw_vectors, self.postprocess_stats)

    @property
    def postprocess_key(self) -> dict[str, Any]:
        """The configuration this embedder's post-processing statistics are fitted for (and checked against on
        load): :func:`~kvembed_rag.postprocess.stats_key` of the vectors *before* post-processing."""
        from .postprocess import stats_key

        return stats_key({**self.describe(), "dim": self.hidden_size})  # the width the statistics take in

    def save_postprocess(self, path: str | os.PathLike[str]) -> Path:
        """Write this embedder's post-processing statistics to ``path`` (safetensors, atomically), keyed by its
        configuration: ``postprocess=path`` then rebuilds the same vectors, for this configuration only.

        Raises :class:`ValueError` when the embedder has none (``postprocess="none"``, or ``"auto"`` that chose
        none).
        """
        from .postprocess import save

        if self.postprocess_stats is None:
            raise ValueError(
                f"this embedder has no post-processing statistics to save (postprocess={self.config.postprocess!r});"
                " build it with e.g. postprocess='center', or fit them on your texts with fit_postprocess(texts)"
            )
        target = Path(path)
        if target.suffix.lower() != ".safetensors":
            raise ValueError(f"a statistics file must end in .safetensors (postprocess= recognises it so); got {path}")
        return save(target, self.postprocess_stats, key=self.postprocess_key)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Embedding width: the backbone's hidden size, or the reduced width of the post-processing."""
        return self.postprocess_stats.out_dim if self.postprocess_stats is not None else self.hidden_size

    @property
    def reducible(self) -> bool:
        """True when the post-processing ends in principal directions ordered by variance (``@DIM``): then the
        first ``k`` coordinates, re-normalised, are the same post-processing reduced to ``k`` dimensions."""
        return self.postprocess_stats is not None and self.postprocess_stats.spec.dim is not None

    def reduce_dimensions(self, vectors: np.ndarray, dim: int) -> np.ndarray:
        """``vectors`` ``(n, self.dim)`` from :meth:`encode` shortened to ``dim`` (needs :attr:`reducible`)."""
        if not self.reducible:
            raise ValueError(
                f"this embedder's post-processing ({self.config.postprocess}) cannot shorten vectors; "
                "configure one with @DIM, e.g. postprocess='whiten:0.3@128'"
            )
        if not 1 <= dim <= self.dim:
            raise ValueError(f"dim must be between 1 and {self.dim}; got {dim}")
        cut = np.asarray(vectors, dtype=np.float32)[..., :dim]
        norms = np.linalg.norm(cut, axis=-1, keepdims=True)
        return np.divide(cut, norms, out=np.zeros_like(cut), where=norms > 0)

    @property
    def hidden_size(self) -> int:
        """The backbone's hidden size (the width before post-processing)."""
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype activations are computed in (float32 around int8 weights)."""
        first = next(self.model.parameters(), None)
        return first.dtype if first is not None else torch.float32

    def describe(self) -> dict[str, Any]:
        """Everything that determines the vectors, JSON-serialisable (recorded in indexes and caches).

        ``provenance`` says how each resolved option was chosen; ``config`` is the resolved configuration
        (``KVEmbedConfig.from_dict(describe()["config"])`` rebuilds the same embedder on any machine).
        """
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
            "postprocess": None if self.postprocess_stats is None else self.postprocess_stats.describe(),
            "provenance": dict(self.provenance),
            "config": self.config.portable().to_dict(),
            # only where the weights are not plain floats: float embedders keep their fingerprints
            **({"weights": weights} if (weights := weights_description(self.model)) else {}),
        }

    to_dict = describe

    @property
    def fingerprint(self) -> str:
        """A short hash of what determines the vectors (:meth:`describe` without the package version, the
        provenance and the runtime settings): equal fingerprints, comparable vectors."""
        payload = {k: v for k, v in self.describe().items() if k not in _NOT_FINGERPRINTED}
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
        ``batch_tokens``, ``show_progress``, ``on_batch(texts_done, tokens_done)`` (called after each forward batch
        with running totals: progress for callers), and for int8/uint8 ``ranges`` / ``calibration_embeddings``.
        """
        single = isinstance(texts, str)
        items: list[str] = [texts] if isinstance(texts, str) else _check_texts(texts)
        chosen_role = _role_from(role, prompt_name)
        self.prompts.for_role(chosen_role)  # validates the role before any work
        on_batch: Callable[[int, int], None] | None = options.pop("on_batch", None)
        settings = self._encode_options(options)
        batch_tokens = settings["batch_tokens"] or self.batch_tokens
        vectors = self._encode(items, chosen_role, batch_tokens, settings["progress"], on_batch)
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
        return self.insert_placeholder(encoded) if reserve else encoded

    def insert_placeholder(self, encoded: list[EncodedText]) -> list[EncodedText]:
        """Token-prepending: put the placeholder token before each text (in place; other methods: unchanged).

        :meth:`tokenize` already does this; call it for ``EncodedText`` built another way (benchmarks).
        """
        if self.spec.token_prepending:
            for item in encoded:
                item.ids.insert(item.text_start, self._placeholder_id)
                item.pool_end += 1
        return encoded

    def last_token_states(self, texts: Sequence[str], role: Role = "document") -> np.ndarray:
        """``(L, n, H)`` float32: each layer's output at each prompted text's last token, without re-routing."""
        items = _check_texts(texts)
        encoded = self.tokenize(items, role)
        out = np.empty((self.num_layers, len(items), self.hidden_size), dtype=np.float32)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
        for batch in _token_batches(order, [len(e.ids) for e in encoded], self.batch_tokens):
            ids, mask, _ = self.collate([encoded[i] for i in batch])
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

    def _encode(
        self,
        texts: list[str],
        role: Role,
        batch_tokens: int,
        show_progress: bool | None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encoded = self.tokenize(texts, role)
        self._warn_truncation(encoded)
        # longest first (as sentence-transformers does): the first batch shows the peak memory at once
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
        out = np.empty((len(encoded), self.hidden_size), dtype=np.float32)  # (n, H) unit rows
        progress = self._progress(len(encoded), show_progress)
        texts_done = tokens_done = 0
        for batch in _token_batches(order, [len(e.ids) for e in encoded], batch_tokens):
            out[batch] = self._forward_splitting(batch, encoded)
            if progress is not None:
                progress.update(len(batch))
            if on_batch is not None:
                texts_done += len(batch)
                tokens_done += sum(len(encoded[i].ids) for i in batch)
                on_batch(texts_done, tokens_done)
        if progress is not None:
            progress.close()
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:
            raise FloatingPointError(
                f"non-finite embeddings for inputs {bad[:10].tolist()}: the backbone overflowed in {self.dtype}; "
                "try dtype='float32'"
            )
        if self.postprocess_stats is not None:
            out = apply_postprocess(out, self.postprocess_stats)  # (n, dim) unit rows, row by row
        return out

    def _forward_splitting(self, batch: list[int], encoded: list[EncodedText]) -> np.ndarray:
        """Forward a batch; on out-of-memory, halve it and retry, down to one text, then name that text."""
        try:
            return self.embed_encoded([encoded[i] for i in batch])
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

    def collate(self, batch: list[EncodedText]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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

    def embed_encoded(self, batch: list[EncodedText]) -> np.ndarray:
        """One forward pass over already tokenized inputs (from :meth:`tokenize`): ``(B, dim)`` unit vectors.

        No batching, sorting or out-of-memory splitting: :meth:`encode` does that; benchmarks time this.
        """
        ids, mask, pool_mask = self.collate(batch)
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


#: describe() keys left out of the fingerprint: they do not change the vectors
_NOT_FINGERPRINTED = ("version", "provenance", "config")

#: the config options the framework adapters expose as plain fields (besides the model itself)
ADAPTER_OPTIONS: tuple[str, ...] = tuple(
    name for name in field_names() if name not in ("model", "revision", "trust_remote_code", "attn_implementation")
)

_SHARED: dict[str, KVEmbedder] = {}
_SHARED_LOCK = threading.Lock()


def shared_embedder(model: str | os.PathLike[str] | KVEmbedConfig = "default", **options: Any) -> KVEmbedder:
    """One loaded :class:`KVEmbedder` per configuration per process, reused by every adapter instance.

    Framework adapters are constructed often (per chain, per worker, after unpickling); loading a model
    each time would cost seconds and memory. The embedder is thread-safe, so sharing it is too.
    """
    if isinstance(model, KVEmbedConfig):
        config = coerce_config(model, **options)
    else:
        config = coerce_config(None, model=os.fspath(model), **options)
    key = json.dumps(config.to_dict(), sort_keys=True, default=repr)  # model_kwargs may hold objects
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = KVEmbedder.from_pretrained(config)
        return _SHARED[key]


def backbone_lock(model: torch.nn.Module) -> threading.RLock:
    """The one lock of a loaded backbone, shared by every embedder built over it.

    Embedders over the same model (other methods, the benchmark) must not run forwards, token-prepending
    hooks or the (not thread-safe) fast tokenizer concurrently.
    """
    lock = getattr(model, "_kvembed_lock", None)
    if lock is None:
        lock = threading.RLock()
        vars(model)["_kvembed_lock"] = lock
    return lock


def _pad_id(tokenizer: Any) -> int:
    candidates = (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
    return next((v for v in candidates if isinstance(v, int)), 0)


def check_resolved(model: torch.nn.Module, tokenizer: Any, config: KVEmbedConfig) -> KVEmbedConfig:
    """Validate a resolved config against the model (layer indices, max_length); returns it normalised."""
    model_config: Any = getattr(model, "config", None)
    num_layers = int(model_config.num_hidden_layers)
    assert isinstance(config.layers, tuple)
    layers = validate_layers(list(config.layers), num_layers) if config.layers else []
    _check_max_length(config.max_length, model_config)
    return config.replace(layers=tuple(layers))


def _check_max_length(max_length: int | None, model_config: Any) -> None:
    model_max = getattr(model_config, "max_position_embeddings", None)
    if isinstance(model_max, int) and max_length is not None and max_length > model_max:
        raise ConfigError(
            f"max_length={max_length} exceeds the model's max_position_embeddings={model_max}; "
            f"pass max_length<={model_max}"
        )


def resolve_postprocess(
    model: torch.nn.Module,
    tokenizer: Any,
    config: KVEmbedConfig,
    *,
    source: ModelSource,
    encode: Callable[[list[str], str], np.ndarray] | None = None,
) -> tuple[PostprocessStats | None, str]:
    """The statistics of ``config.postprocess`` and where they came from: ``"file"`` when it names a statistics
    file (checked against this configuration), ``"shipped"`` with the package, ``"cached"`` on this machine
    (fitted once before), or ``"fitted"`` now on the 222 shipped calibration texts (as documents, by a separate
    embedder without post-processing), then cached. Deterministic: the same configuration fits the same
    statistics on every machine.

    ``encode(texts, role)``, when given, supplies that separate embedder's vectors instead of encoding them
    again (``kvembed-rag tune`` passes the raw vectors it already holds for the same configuration)."""
    if config.postprocess == "none":
        return None, "none"
    from . import postprocess as pp
    from ._io import cache_root

    raw = KVEmbedder(model, tokenizer, config.replace(postprocess="none"), source=source)
    key = pp.stats_key(raw.describe())
    if is_stats_path(config.postprocess):
        path = Path(config.postprocess).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"postprocess={config.postprocess!r}: no such statistics file; write one with 'kvembed-rag "
                "postprocess fit' or KVEmbedder.save_postprocess(path), or give a kind such as 'center'"
            )
        try:
            return pp.load(path, key=key), "file"
        except pp.PostprocessMismatchError as exc:
            raise pp.PostprocessMismatchError(
                f"postprocess={config.postprocess!r}: {exc}. 'kvembed-rag postprocess show {path}' prints the "
                "configuration the file was fitted for; 'kvembed-rag postprocess fit' fits one for this configuration"
            ) from None
        except OSError as exc:
            raise ConfigError(f"postprocess={config.postprocess!r}: cannot read the statistics file ({exc})") from None
    if config.postprocess == "auto":
        chosen = pp.shipped_default(key)  # shipped data, the same on every machine
        if chosen is None:
            return None, "none"
        spec = chosen
    else:
        spec = pp.parse_spec(config.postprocess)
    shipped = pp.shipped_stats(key, spec)
    if shipped is not None:
        return shipped, "shipped"
    digest = hashlib.sha256(json.dumps({"key": key, "spec": spec.to_dict()}, sort_keys=True).encode()).hexdigest()
    path = cache_root() / "postprocess" / f"{digest[:24]}.safetensors"
    if path.is_file():
        try:
            cached = pp.load(path, key=key, spec=spec)
            pp.check_determined(spec, cached.n, cached.in_dim)  # a fit older releases allowed: refit (refused)
            return cached, "cached"
        except (OSError, ValueError, KeyError) as exc:
            warnings.warn(f"post-processing cache {path} is unusable ({exc}); refitting it", RuntimeWarning, 2)
    try:
        if encode is None:
            stats = pp.fit_embedder(raw, spec)
        else:
            from .layer_selection import load_calibration

            stats = pp.fit(encode(load_calibration(), "document"), spec)
    except ValueError as exc:  # e.g. @DIM beyond what the calibration texts determine
        raise ConfigError(
            f"postprocess={config.postprocess!r} cannot be fitted on the shipped calibration texts: {exc}; "
            "or fit it on your own texts with embedder.fit_postprocess(texts) / 'kvembed-rag postprocess fit'"
        ) from None
    pp.save(path, stats, key=key)
    return stats, "fitted"


def resolve_config(
    model: torch.nn.Module,
    tokenizer: Any,
    config: KVEmbedConfig,
    *,
    source: ModelSource,
) -> tuple[KVEmbedConfig, dict[str, str], Any]:
    """Resolve every ``None`` / rule option of ``config`` against a loaded model, before an embedder exists.

    Returns the resolved config, how each of ``layers``, ``bias`` and ``pooling`` was chosen, and the
    ``LayerSelection`` when the intrinsic-dimension rule ran. ``layers="auto"`` runs the shipped calibration
    texts through a separate embedder with the default window (or reads the cached / shipped selection);
    ``layers="tuned"`` reads the store of tuned defaults and fails if ``kvembed-rag tune`` saved nothing.
    """
    model_config: Any = getattr(model, "config", None)
    num_layers = int(model_config.num_hidden_layers)
    spec = get_method(config.method)
    provenance = {"layers": "given", "bias": "given", "pooling": "given"}
    model_max = getattr(model_config, "max_position_embeddings", None)
    max_length = config.max_length
    if max_length is None:
        max_length = min(DEFAULT_MAX_LENGTH, model_max) if isinstance(model_max, int) else DEFAULT_MAX_LENGTH
    _check_max_length(max_length, model_config)
    padding_side = config.padding_side or getattr(tokenizer, "padding_side", "right") or "right"
    cheap = config.replace(
        max_length=max_length,
        padding_side=padding_side,
        pooling=config.pooling or spec.pooling,
        prompts=config.prompts or spec.prompts,
        bias=DEFAULT_BIAS if config.bias is None else config.bias,
    )
    if config.pooling is None:
        provenance["pooling"] = "method"
    if config.bias is None:
        provenance["bias"] = "default"
    selection: Any = None
    layers = config.layers
    if layers == "default" or (layers == "auto" and not spec.reroute):
        # only kv re-routes: do not spend a calibration pass on a window other methods never use
        window = default_window(num_layers)
        provenance["layers"] = "default-window"
    elif layers == "auto":
        from .layer_selection import select_layers

        # without post-processing: the selection reads hidden states (its cache key ignores post-processing), and
        # statistics fitted for the final window (a file) do not fit the default one
        calibrating = KVEmbedder(
            model,
            tokenizer,
            cheap.replace(layers=tuple(default_window(num_layers)), postprocess="none"),
            source=source,
        )
        selection = select_layers(calibrating)
        window = list(selection.layers)
        provenance["layers"] = "intrinsic-dimension"
    elif layers == "tuned":
        from .tuned import load_tuned, tuned_path

        tuned = load_tuned(source, num_layers)
        if tuned is None:
            raise ConfigError(
                f"layers='tuned' but no tuned configuration is saved for {source.spec!r} at "
                f"{tuned_path(source, num_layers)}; run 'kvembed-rag tune' first, or use layers='auto'"
            )
        window = list(tuned["layers"])
        provenance["layers"] = "tuned"
        if config.bias is None:
            cheap = cheap.replace(bias=float(tuned["bias"]))
            provenance["bias"] = "tuned"
        if config.pooling is None and tuned.get("pooling") in POOLINGS:
            cheap = cheap.replace(pooling=str(tuned["pooling"]))
            provenance["pooling"] = "tuned"
        if config.postprocess == "auto" and tuned.get("postprocess") is not None:
            # tuned with its post-processing (a mixed tune searches both): the pair is what won
            cheap = cheap.replace(postprocess=str(tuned["postprocess"]))
            provenance["postprocess"] = "tuned"
    else:
        assert isinstance(layers, tuple)
        window = validate_layers(list(layers), num_layers)
    return cheap.replace(layers=tuple(window)), provenance, selection


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


__all__ = ["KVEmbedder", "ReroutingPlan", "TruncationWarning", "resolve_config", "shared_embedder"]
