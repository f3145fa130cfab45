"""``KVEmbedder``: a frozen decoder-only LLM as a text embedder, in one forward pass.

Construction resolves the configuration first (:mod:`kvembed_rag.resolve`), then wraps a
:class:`~kvembed_rag.forward.Forward` (the encode loop and the forward pass) with the post-processing the resolved
configuration names. sentence-transformers' vocabulary comes from :mod:`kvembed_rag.sentence_transformers_api`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch

from .attention import ATTN_SDPA, ReroutingPlan, check_merged_slot_kernel, probe_dispatch, resolve_backend
from .config import (
    LOAD,
    RUNTIME,
    VECTORS,
    KVEmbedConfig,
    ResolvedConfig,
    coerce_config,
    field_names,
    vector_fingerprint,
)
from .errors import TruncationWarning
from .forward import Forward, backbone_lock, check_texts
from .loading import ModelSource, load_model, load_tokenizer, pick_device, pick_dtype
from .loading import resolve as resolve_location
from .methods import MethodSpec, get_method
from .postprocess import PostprocessStats, calibration_query_mean, parse_spec, spec_text
from .postprocess import apply as apply_postprocess
from .postprocess import fit as fit_postprocess
from .prompts import PromptTemplate, Role
from .resolve import resolve
from .sentence_transformers_api import SentenceTransformersAPI, finish, role_from
from .tokenization import EncodedText


class KVEmbedder(SentenceTransformersAPI):
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
        config: KVEmbedConfig | ResolvedConfig | Mapping[str, Any] | None = None,
        *,
        source: ModelSource | None = None,
        postprocess_stats: PostprocessStats | None = None,
        **options: Any,
    ) -> None:
        """``config`` (or keyword options) is resolved against ``model`` first (:func:`kvembed_rag.resolve.resolve`),
        unless it is a :class:`ResolvedConfig` already; ``postprocess_stats`` gives fitted statistics directly."""
        model_config: Any = getattr(model, "config", None)
        source = source or ModelSource(getattr(model_config, "_name_or_path", "") or type(model).__name__, "object", "")
        if isinstance(config, ResolvedConfig):
            if options or postprocess_stats is not None:
                raise TypeError("a ResolvedConfig is final: give options to resolve() instead")
            resolved = config
        else:
            if config is None and "model" not in options:
                options["model"] = source.spec or "object"
            requested = coerce_config(config, **options)
            resolved = resolve(model, tokenizer, requested, source=source, postprocess_stats=postprocess_stats)
        self.resolved = resolved
        self.forward = Forward(model, tokenizer, resolved, source)
        self.model: Any = model  # a transformers PreTrainedModel (typed loosely: its config is dynamic)
        self.tokenizer = tokenizer
        self.source = source
        #: the resolved configuration (``KVEmbedConfig.from_dict(describe()["config"])`` rebuilds this embedder)
        self.config: KVEmbedConfig = resolved.config
        self.num_layers = self.forward.num_layers
        self.spec: MethodSpec = self.forward.spec
        #: how each resolved option was chosen ("given", "method", "model", "intrinsic-dimension", "tuned" ...)
        self.provenance: dict[str, str] = dict(resolved.provenance)
        #: the fitted isotropy calibration applied to every vector (None: config.postprocess == "none")
        self.postprocess_stats: PostprocessStats | None = resolved.postprocess_stats
        self.layer_selection: Any = resolved.layer_selection  # the LayerSelection when layers="id" chose
        for role in ("document", "query"):
            self.tokenize([""], role)  # fail now, not mid-corpus, if the prompt alone exceeds max_length

    # ------------------------------------------------------------------ resolved options (read-only views)
    @property
    def method(self) -> str:
        return self.resolved.method

    @property
    def layers(self) -> list[int]:
        """The re-routed layers (for methods that do not re-route: the window they would carry to ``kv``)."""
        return list(self.resolved.layers)

    @property
    def bias(self) -> float:
        return self.resolved.bias

    @property
    def pooling(self) -> str:
        return self.resolved.pooling

    @property
    def prompts(self) -> PromptTemplate:
        return self.resolved.prompts

    @property
    def max_length(self) -> int:
        return self.resolved.max_length

    @property
    def batch_tokens(self) -> int:
        return self.resolved.batch_tokens

    @property
    def padding_side(self) -> str:
        return self.resolved.padding_side

    @property
    def show_progress(self) -> bool:
        return self.resolved.show_progress

    @property
    def tuned(self) -> bool:
        """True when the window came from the store of tuned defaults (``layers="tuned"``)."""
        return self.provenance.get("layers") == "tuned"

    @property
    def pad_id(self) -> int:
        return self.forward.pad_id

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model: str | os.PathLike[str] | KVEmbedConfig = "default", **options: Any) -> KVEmbedder:
        """Load ``model`` (``"default"``, a hub id, a local directory or a ``.gguf`` file) as an embedder.

        ``options`` are the fields of :class:`~kvembed_rag.config.KVEmbedConfig` (``method``, ``layers``,
        ``bias``, ``pooling``, ``prompts``, ``max_length``, ``device``, ``dtype``, ...); ``model`` may also be a
        whole ``KVEmbedConfig``. ``dtype`` ``None``/``"auto"`` (default): bfloat16 on CUDA and on CPUs where
        native bf16 is present and measured faster, else float32 (see :mod:`kvembed_rag.hardware`).
        ``model_kwargs`` go to transformers' ``from_pretrained`` (``device_map``, ``quantization_config``,
        ``low_cpu_mem_usage`` ...) for backbones that need them, quantised loading included.
        ``attn_implementation`` is ``"sdpa"`` (fast) or ``"eager"`` (reference); flash and flex kernels are
        refused because they have no place for the prefix slot's bias.
        """
        if isinstance(model, KVEmbedConfig):
            config = coerce_config(model, **options)
        else:
            config = coerce_config(None, model=os.fspath(model), **options)
        backend = resolve_backend(config.attn_implementation)
        location, source = resolve_location(
            config.model, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
        torch_device = pick_device(config.device)
        torch_dtype = pick_dtype(config.dtype, torch_device)
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

    # ------------------------------------------------------------------ post-processing (thin: postprocess/)
    def fit_postprocess(
        self,
        texts: Sequence[str],
        spec: str | None = None,
        *,
        role: Role = "document",
        raw_vectors: np.ndarray | None = None,
        query_raw_vectors: np.ndarray | None = None,
    ) -> KVEmbedder:
        """This embedder with its post-processing fitted on ``texts`` (e.g. your own corpus) instead of the
        shipped calibration texts: the same statistics, fitted on the ``role`` vectors before post-processing.

        ``spec`` defaults to the config's ``postprocess`` (``"center"`` if that is ``"none"``). The result's
        ``describe()`` records the statistics' fingerprint, so an index built with it refuses other embedders.
        ``raw_vectors`` ``(len(texts), hidden)``: the texts' vectors before post-processing, already computed with
        this configuration (:meth:`raw`), so that nothing is embedded again. Queries are centred on the mean of
        ``query_raw_vectors`` (default, for a ``"document"`` fit: the calibration texts embedded as queries, cached
        per configuration), not on the documents' mean, which on one corpus's passages ranked by the gap between
        the two prompts instead of the question (docs/RESULTS.md, "the corpus-fit trap").
        """
        if spec:
            text = spec
        elif self.postprocess_stats is not None:  # e.g. statistics read from a file: refit the same kind
            text = spec_text(self.postprocess_stats.spec)
        else:
            text = "center"
        config = self.config.replace(postprocess=text)
        checked = check_texts(texts)
        if raw_vectors is None:
            raw_vectors = self.forward.encode(checked, role)
        elif raw_vectors.shape != (len(checked), self.hidden_size):
            raise ValueError(
                f"raw_vectors must have shape {(len(checked), self.hidden_size)} (one raw vector per text); "
                f"got {raw_vectors.shape}"
            )
        if query_raw_vectors is None and role == "document":
            query_raw_vectors = calibration_query_mean(self.postprocess_key, self.forward.encode)
        stats = fit_postprocess(raw_vectors, parse_spec(config.postprocess), query_vectors=query_raw_vectors)
        return KVEmbedder(self.model, self.tokenizer, config, source=self.source, postprocess_stats=stats)

    def raw(self) -> KVEmbedder:
        """This embedder without post-processing (the same backbone, ``postprocess="none"``): its vectors are
        the ones post-processing statistics are fitted on and applied to (:meth:`apply_postprocess`)."""
        if self.postprocess_stats is None:
            return self
        return KVEmbedder(self.model, self.tokenizer, self.config.replace(postprocess="none"), source=self.source)

    def apply_postprocess(self, raw_vectors: np.ndarray, role: Role = "document") -> np.ndarray:
        """This embedder's post-processing applied to ``role`` vectors of :meth:`raw` ``(n, hidden)``: row by row,
        so the result equals what :meth:`encode` gives for the same texts (up to batching round-off)."""
        if self.postprocess_stats is None:
            return np.asarray(raw_vectors, dtype=np.float32)
        return apply_postprocess(raw_vectors, self.postprocess_stats, role)

    @property
    def postprocess_key(self) -> dict[str, Any]:
        """The configuration this embedder's post-processing statistics are fitted for (and checked against on
        load): :func:`~kvembed_rag.config.raw_vector_key` of the vectors *before* post-processing."""
        from .postprocess import stats_key

        return stats_key(self.forward.describe())

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
        return self.forward.hidden_size

    @property
    def device(self) -> torch.device:
        return self.forward.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype activations are computed in."""
        return self.forward.dtype

    def describe(self) -> dict[str, Any]:
        """Everything that determines the vectors, JSON-serialisable (recorded in indexes and caches).

        ``provenance`` says how each resolved option was chosen; ``config`` is the resolved configuration
        (``KVEmbedConfig.from_dict(describe()["config"])`` rebuilds the same embedder on any machine).
        """
        stats = self.postprocess_stats
        return {
            **self.forward.describe(),
            "dim": self.dim,
            "postprocess": None if stats is None else stats.describe(),
        }

    to_dict = describe

    @property
    def fingerprint(self) -> str:
        """A short hash of what determines the vectors (:func:`~kvembed_rag.config.vector_fingerprint`): equal
        fingerprints, comparable vectors."""
        return vector_fingerprint(self.describe())

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
        items: list[str] = [texts] if isinstance(texts, str) else check_texts(texts)
        chosen_role = role_from(role, prompt_name)
        self.prompts.for_role(chosen_role)  # validates the role before any work
        on_batch: Callable[[int, int], None] | None = options.pop("on_batch", None)
        settings = self._encode_options(options)
        batch_tokens = settings["batch_tokens"] or self.batch_tokens
        vectors = self.forward.encode(
            items, chosen_role, batch_tokens=batch_tokens, show_progress=settings["progress"], on_batch=on_batch
        )
        if self.postprocess_stats is not None:
            vectors = apply_postprocess(vectors, self.postprocess_stats, chosen_role)  # (n, dim) unit rows, row-wise
        return finish(vectors, single, settings, convert_to_tensor=convert_to_tensor, convert_to_numpy=convert_to_numpy)

    def encode_documents(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray:
        """Embed passages to be retrieved (the document prompt)."""
        return self.encode(texts, "document", **kwargs)

    def encode_queries(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray:
        """Embed search queries (the query prompt)."""
        return self.encode(texts, "query", **kwargs)

    def tokenize(self, texts: Sequence[str], role: Role = "document") -> list[EncodedText]:
        """Prompted, truncated token ids per text (what :meth:`encode` feeds the model)."""
        return self.forward.tokenize(texts, role)

    def insert_placeholder(self, encoded: list[EncodedText]) -> list[EncodedText]:
        """Token-prepending: put the placeholder token before each text (in place; other methods: unchanged)."""
        return self.forward.insert_placeholder(encoded)

    def last_token_states(self, texts: Sequence[str], role: Role = "document") -> np.ndarray:
        """``(L, n, H)`` float32: each layer's output at each prompted text's last token, without re-routing."""
        return self.forward.last_token_states(texts, role)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of ``text`` alone (no prompt, no special tokens)."""
        return self.forward.token_offsets(text)

    def sentence_ends(self, text: str) -> list[bool] | None:
        """Whether each token of ``text`` alone ends a sentence when the method adds tokens per sentence (HTP: two
        markers each), else ``None``; the chunker counts them so a passage is never cut to make room."""
        return self.forward.sentence_ends(text)

    def collate(self, batch: list[EncodedText]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, T)`` ids, padding mask and pooling mask (see :meth:`Forward.collate`)."""
        return self.forward.collate(batch)

    def embed_encoded(self, batch: list[EncodedText]) -> np.ndarray:
        """One forward pass over already tokenized inputs: ``(B, hidden)`` raw unit vectors (benchmarks time this)."""
        return self.forward.embed_encoded(batch)


#: the config options the framework adapters expose as plain fields (besides the model itself, which each
#: framework names its own way: LangChain ``model``, LlamaIndex ``model_name``)
ADAPTER_OPTIONS: tuple[str, ...] = tuple(name for name in field_names() if name != "model")

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


__all__ = ["ADAPTER_OPTIONS", "KVEmbedder", "ReroutingPlan", "TruncationWarning", "backbone_lock", "shared_embedder"]
