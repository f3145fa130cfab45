"""``KVEmbedConfig``: every option of an embedder, its default and its validation, in one frozen object.

This is the single place where an option and its default are written. Everything else is derived from it:
``KVEmbedder.from_pretrained`` keyword arguments, the CLI's model flags, both framework adapters' fields, the
MTEB wrapper, and the configuration an index records (and restores exactly) for its queries.

A configuration is *resolved* against a loaded model before an embedder is built (``kvembed_rag.resolve``):
``None`` options become concrete values (the method's pooling and prompts, ``max_length`` at the model's limit),
``layers="auto"`` becomes the middle-depth window and ``postprocess="auto"`` the shipped choice. The result is
a :class:`ResolvedConfig`, whose fields have concrete types. Nothing here reads machine state: ``layers="tuned"``
(what ``kvembed-rag tune`` saved) applies only when asked.

What determines the vectors is written here once (:data:`RAW_VECTOR_FIELDS`, :data:`VECTOR_FIELDS`): the
embedder's fingerprint, the post-processing statistics' key and an index's compatibility check all derive from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .methods import METHODS, get_method
from .prompts import PromptTemplate

DEFAULT_BIAS = 1.0
DEFAULT_MAX_LENGTH = 4096
#: text tokens per passage when a long document is indexed for RAG (index, the LangChain and LlamaIndex
#: splitters): chosen on QMSum meetings by the answer's share in a 2,048-token generator budget; re-measured after a
#: fix to that measure, one 2,048-token passage holds as much as four of 512 (0.450 / 0.452 on 568 questions) and
#: 2,048 stays (docs/RESULTS.md, "Passage size re-decided"); capped at max_length; an option of indexing only
PASSAGE_TOKENS = 2048
#: text tokens per piece of a passage for small-to-big retrieval (``child_tokens=CHILD_TOKENS`` in ``index``,
#: ``build_index`` and both adapters' stores): each passage is embedded as its pieces and scored by the best, while
#: BM25 and the generator see the whole passage. Not the default (``child_tokens=0``): on 24 fresh QMSum meetings
#: it lifted dense kv by +0.09 nDCG@10 and the answer's share by +0.02, but the fused ranking not at all (0.762
#: against 0.764; docs/RESULTS.md, "Small-to-big, built and measured")
CHILD_TOKENS = 256
#: the named layer rules: "auto" (today the middle-depth rule: the only rule that found the label-scored
#: winner on both offline models, docs/RESULTS.md), "middle" (the same, by name), "id" (the intrinsic-dimension
#: window, KV-Embedding's rule; "auto" until 2026-12-06), "default" (the 20%-depth window), or "tuned" (the
#: window, bias and pooling ``kvembed-rag tune`` saved for the model)
LAYER_RULES = ("auto", "middle", "id", "default", "tuned")
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
PADDING_SIDES = ("left", "right")
#: the poolings (kvembed_rag.pooling implements them); written here so that reading a config needs no torch
POOLINGS: tuple[str, ...] = ("hybrid", "mean", "last")

#: field groups: what loads the backbone, what determines the vectors, how encoding runs
LOAD, VECTORS, RUNTIME = "load", "vectors", "runtime"

#: ``describe()`` fields that shape a vector before post-processing (besides the model's identity): the key
#: post-processing statistics are fitted for. Not dtype or max_length: calibration texts are short, and bf16 vectors
#: agree with float32 ones to cos >= 0.999, so the same statistics serve both.
RAW_VECTOR_FIELDS = (
    "architecture",
    "num_layers",
    "dim",
    "method",
    "layers",
    "bias",
    "token_prepending_layers",
    "pooling",
    "prompts",
)
#: ``describe()`` fields that must agree for two embedders' vectors to be comparable (an index checks them)
VECTOR_FIELDS = (*RAW_VECTOR_FIELDS, "postprocess")
#: ``describe()`` fields that never change a vector: left out of the fingerprint
NOT_VECTOR_FIELDS = ("version", "provenance", "config", "batch_invariance")


def model_identity(description: Mapping[str, Any]) -> Any:
    """The weights' identity in a ``describe()`` record (a content hash or a resolved hub commit)."""
    model = description.get("model")
    return model.get("identity") if isinstance(model, Mapping) else model


def raw_vector_key(description: Mapping[str, Any]) -> dict[str, Any]:
    """What post-processing statistics are fitted for: the model's identity and :data:`RAW_VECTOR_FIELDS`."""
    key = {name: description.get(name) for name in RAW_VECTOR_FIELDS}
    key["model"] = model_identity(description)
    return dict(json.loads(json.dumps(key, sort_keys=True)))


def vector_fingerprint(description: Mapping[str, Any]) -> str:
    """A short hash of everything in ``describe()`` that determines the vectors: equal fingerprints, comparable
    vectors."""
    payload = {k: v for k, v in description.items() if k not in NOT_VECTOR_FIELDS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def vector_differences(stored: Mapping[str, Any], querying: Mapping[str, Any]) -> list[str]:
    """The :data:`VECTOR_FIELDS` (and ``model``) in which two ``describe()`` records disagree."""
    differences = [key for key in VECTOR_FIELDS if key in stored and stored.get(key) != querying.get(key)]
    if model_identity(stored) != model_identity(querying):
        differences.insert(0, "model")
    return differences


def _option(default: Any, group: str, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"group": group, "help": help, **extra})


@dataclass(frozen=True)
class KVEmbedConfig:
    """Every option of a :class:`~kvembed_rag.KVEmbedder`; ``None`` means "the method's / the model's own"."""

    model: str = _option("default", LOAD, "'default' (Gemma-3-270M, offline), a hub id, a directory or a .gguf file")
    revision: str | None = _option(None, LOAD, "hub revision (branch, tag or commit)")
    device: str | None = _option(None, LOAD, "cpu, cuda, mps (default: CUDA, then MPS, then CPU)")
    dtype: str | None = _option(
        None, LOAD, "auto (default: bf16 on CUDA and on CPUs with native, faster bf16; else fp32), float32, bfloat16"
    )
    attn_implementation: str = _option("sdpa", LOAD, "sdpa (fast) or eager (reference); flash/flex are refused")
    trust_remote_code: bool = _option(False, LOAD, "run model code from the hub (off unless you turn it on)")
    model_kwargs: dict[str, Any] | None = _option(  # noqa: RUF009 - a dataclasses.field, not a shared default
        None, LOAD, "extra keyword arguments for transformers' from_pretrained (device_map, quantization_config ...)"
    )
    method: str = _option("kv", VECTORS, f"embedding method: {', '.join(METHODS)}")
    layers: tuple[int, ...] | str = _option(
        "auto",
        VECTORS,
        "re-routed layers: 'auto' (= 'middle', the middle-depth window), 'id' (intrinsic-dimension window), "
        "'default', 'tuned' or e.g. '3,4'",
    )
    bias: float | None = _option(None, VECTORS, f"logit bias on the re-routed slot (default {DEFAULT_BIAS:g})")
    pooling: str | None = _option(None, VECTORS, f"{', '.join(POOLINGS)} (default: the method's)")
    prompts: PromptTemplate | None = _option(  # noqa: RUF009 - a dataclasses.field, not a shared default
        None, VECTORS, "document/query templates with {text} (default: the method's)"
    )
    max_length: int | None = _option(
        None, VECTORS, f"tokens per input; longer inputs are cut (default {DEFAULT_MAX_LENGTH} or the model's limit)"
    )
    postprocess: str = _option(
        "auto",
        VECTORS,
        "isotropy calibration fitted on the shipped calibration texts: auto (the measured default of a shipped"
        " model and method, else none), none, center, remove-top:K, whiten[:S], optionally @DIM (e.g. center@256);"
        " or a .safetensors file of statistics ('kvembed-rag postprocess fit')",
    )
    batch_tokens: int = _option(16_384, RUNTIME, "padded tokens per forward pass (inputs are sorted by length)")
    padding_side: str | None = _option(None, RUNTIME, "left or right (default: the tokenizer's)")
    show_progress: bool = _option(False, RUNTIME, "show a progress bar while encoding")

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalised values are written once, here
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"model must be a non-empty string (a name, hub id or path); got {self.model!r}")
        try:
            set_(self, "method", get_method(self.method).name)
        except (ValueError, AttributeError) as exc:
            raise ConfigError(str(exc)) from None
        set_(self, "layers", _normalise_layers(self.layers))
        if self.bias is not None:
            if isinstance(self.bias, bool) or not isinstance(self.bias, (int, float)) or math.isnan(self.bias):
                raise ConfigError(f"bias must be a number; got {self.bias!r}")
            set_(self, "bias", float(self.bias))
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}; got {self.pooling!r}")
        if self.prompts is not None:
            try:
                set_(self, "prompts", PromptTemplate.coerce(self.prompts, get_method(self.method).prompts))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"prompts: {exc}") from None
        for name in ("max_length", "batch_tokens"):
            value = getattr(self, name)
            if value is None and name == "max_length":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int; got {value!r}")
        set_(self, "postprocess", _normalise_postprocess(self.postprocess))
        if self.padding_side is not None and self.padding_side not in PADDING_SIDES:
            raise ConfigError(f"padding_side must be 'left' or 'right'; got {self.padding_side!r}")
        if self.dtype is not None and not (isinstance(self.dtype, str) and self.dtype in DTYPES):
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.model_kwargs is not None and not isinstance(self.model_kwargs, Mapping):
            raise ConfigError(f"model_kwargs must be a dict of from_pretrained arguments; got {self.model_kwargs!r}")
        if not isinstance(self.attn_implementation, str):
            raise ConfigError(f"attn_implementation must be a string; got {self.attn_implementation!r}")

    # ------------------------------------------------------------------ views
    @property
    def is_resolved(self) -> bool:
        """True when nothing is left to the model: concrete layers, bias, pooling, prompts, max_length, padding."""
        return isinstance(self.layers, tuple) and None not in (
            self.bias,
            self.pooling,
            self.prompts,
            self.max_length,
            self.padding_side,
        )

    def replace(self, **changes: Any) -> KVEmbedConfig:
        """A copy with ``changes`` (validated like the constructor); unknown names raise :class:`ConfigError`."""
        unknown = set(changes) - set(field_names())
        if unknown:
            raise ConfigError(f"unknown options {sorted(unknown)}; options are {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (lists for layers, a dict for prompts): ``from_dict(to_dict())`` is equal."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, PromptTemplate):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KVEmbedConfig:
        """The inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError` naming them."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a configuration must be a mapping; got {type(data).__name__}")
        unknown = set(data) - set(field_names())
        if unknown:
            raise ConfigError(f"unknown options {sorted(unknown)}; options are {', '.join(field_names())}")
        return cls(**dict(data))

    def vector_options(self) -> dict[str, Any]:
        """The options that determine the vectors (the ``vectors`` group, plus the model and dtype)."""
        data = self.to_dict()
        return {name: data[name] for name in ("model", "dtype", *field_names(VECTORS))}

    @property
    def fingerprint(self) -> str:
        """A short hash of the options alone (before resolution). ``KVEmbedder.fingerprint`` is the one that names
        vectors: it hashes the resolved ``describe()`` with the weights' identity (:func:`vector_fingerprint`)."""
        payload = json.dumps(self.vector_options(), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def portable(self) -> KVEmbedConfig:
        """This configuration without the machine-specific choices (device, progress bar, ``model_kwargs`` such as a
        device map, which need not be JSON): what an index keeps."""
        return dataclasses.replace(self, device=None, show_progress=False, model_kwargs=None)


@dataclass(frozen=True)
class ResolvedConfig:
    """A :class:`KVEmbedConfig` resolved against one loaded model: every vector option concrete.

    Built by :func:`kvembed_rag.resolve.resolve` (never by hand: :meth:`of` checks a config that claims to be
    resolved). ``config`` is the same as a plain config (what ``describe()["config"]`` records and
    ``KVEmbedConfig.from_dict`` rebuilds on any machine); ``provenance`` says how each option was chosen
    ("given", "method", "default", "middle-depth", "intrinsic-dimension", "tuned", "shipped-default" ...);
    ``postprocess_stats`` are the fitted statistics ``config.postprocess`` names (``None`` for ``"none"``);
    ``layer_selection`` the intrinsic-dimension curve when ``layers="id"`` chose the window.
    """

    config: KVEmbedConfig
    layers: tuple[int, ...]
    bias: float
    pooling: str
    prompts: PromptTemplate
    max_length: int
    padding_side: str
    provenance: Mapping[str, str] = field(default_factory=dict)
    postprocess_stats: Any = field(default=None, compare=False)  # PostprocessStats (numpy): kept untyped here
    layer_selection: Any = field(default=None, compare=False)  # the LayerSelection when layers="id" chose

    @classmethod
    def of(
        cls, config: KVEmbedConfig, provenance: Mapping[str, str] | None = None, postprocess_stats: Any = None
    ) -> ResolvedConfig:
        """The typed view of a config with nothing left to resolve; :class:`ConfigError` names what is missing."""
        names = ("bias", "pooling", "prompts", "max_length", "padding_side")
        missing = [name for name in names if getattr(config, name) is None]
        if not isinstance(config.layers, tuple):
            missing.insert(0, "layers")
        if missing or config.postprocess == "auto":
            raise ConfigError(
                f"this configuration is not resolved ({', '.join(missing) or 'postprocess=auto'} left to the model); "
                "resolve it with kvembed_rag.resolve.resolve(model, tokenizer, config)"
            )
        assert isinstance(config.layers, tuple)
        assert config.bias is not None and config.pooling is not None and config.prompts is not None
        assert config.max_length is not None and config.padding_side is not None
        return cls(
            config,
            config.layers,
            config.bias,
            config.pooling,
            config.prompts,
            config.max_length,
            config.padding_side,
            dict(provenance or {}),
            postprocess_stats,
        )

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def postprocess(self) -> str:
        return self.config.postprocess

    @property
    def batch_tokens(self) -> int:
        return self.config.batch_tokens

    @property
    def show_progress(self) -> bool:
        return self.config.show_progress


#: what a ``postprocess`` value that names a statistics file ends with (``kvembed-rag postprocess fit`` writes one)
STATS_SUFFIX = ".safetensors"


def is_stats_path(postprocess: str) -> bool:
    """True when a (normalised) ``postprocess`` value names a statistics file rather than a kind to fit."""
    return postprocess.lower().endswith(STATS_SUFFIX)


def _normalise_postprocess(text: object) -> str:
    """Check the post-processing spelling here (no numpy import: a config is read by ``--help`` too).

    A value ending in ``.safetensors`` is a path to fitted statistics: kept as given (stripped), not read here
    (nothing in a config reads machine state); the embedder resolves and loads it when it is built.
    """
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(
            "postprocess must be a string such as 'none', 'center' or 'whiten:auto', or a path to a .safetensors "
            f"statistics file; got {text!r}"
        )
    if is_stats_path(text.strip()):
        return text.strip()
    body, _, dim = text.strip().lower().partition("@")
    kind, _, argument = body.partition(":")
    problem = None
    if kind == "auto" and (argument or dim):
        problem = "'auto' takes no argument"
    elif kind not in ("auto", "none", "center", "remove-top", "whiten"):
        problem = "the kind must be auto, none, center, remove-top or whiten, or a path ending in .safetensors"
    elif dim and (not dim.isdigit() or int(dim) < 1):
        problem = "@DIM must be a positive integer"
    elif dim and kind == "none":
        problem = "'none' cannot reduce the width"
    elif kind == "remove-top" and argument and (not argument.isdigit() or int(argument) < 1):
        problem = "remove-top:K needs K >= 1"
    elif kind == "whiten" and argument and argument != "auto":
        try:
            if not 0.0 <= float(argument) <= 1.0:
                problem = "whiten:S needs a shrinkage S in [0, 1] or 'auto'"
        except ValueError:
            problem = "whiten:S needs a shrinkage S in [0, 1] or 'auto'"
    elif kind in ("none", "center") and argument:
        problem = f"{kind} takes no ':' argument"
    if problem:
        raise ConfigError(f"postprocess {text!r}: {problem} (e.g. 'center', 'remove-top:2', 'whiten:auto@256')")
    if kind == "remove-top" and not argument:
        argument = "1"
    if kind == "whiten" and not argument:
        argument = "auto"
    return kind + (f":{argument}" if argument else "") + (f"@{int(dim)}" if dim else "")


def _normalise_layers(layers: object) -> tuple[int, ...] | str:
    if layers is None:
        return "auto"
    if isinstance(layers, str):
        text = layers.strip()
        if text in LAYER_RULES:
            return text
        try:
            layers = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ConfigError(
                f"layers must be {', '.join(repr(r) for r in LAYER_RULES)} or layer indices like '3,4'; got {text!r}"
            ) from None
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if not isinstance(layers, (Sequence, range, set, frozenset)) or isinstance(layers, (str, bytes)):
        raise ConfigError(f"layers must be a rule name or a list of layer indices; got {type(layers).__name__}")
    values = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ConfigError(f"layer indices must be ints; got {layer!r}")
        values.append(layer)
    return tuple(values)


def field_names(group: str | None = None) -> tuple[str, ...]:
    """The option names, in declaration order (of one group: ``"load"``, ``"vectors"`` or ``"runtime"``)."""
    return tuple(f.name for f in dataclasses.fields(KVEmbedConfig) if group is None or f.metadata["group"] == group)


def option_help(name: str) -> str:
    """The one-line help text of an option (CLI flags and adapter field descriptions use it)."""
    return str(_fields()[name].metadata["help"])


def option_default(name: str) -> Any:
    """The default of an option, as written in :class:`KVEmbedConfig`."""
    return _fields()[name].default


def _fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(KVEmbedConfig)}


def coerce_config(config: KVEmbedConfig | Mapping[str, Any] | None = None, **options: Any) -> KVEmbedConfig:
    """A config from a config, a mapping or keyword options (keyword options override the first two)."""
    if config is None:
        base = KVEmbedConfig()
    elif isinstance(config, KVEmbedConfig):
        base = config
    else:
        base = KVEmbedConfig.from_dict(config)
    return base.replace(**options) if options else base


__all__ = [
    "CHILD_TOKENS",
    "DEFAULT_BIAS",
    "DEFAULT_MAX_LENGTH",
    "LAYER_RULES",
    "NOT_VECTOR_FIELDS",
    "PASSAGE_TOKENS",
    "RAW_VECTOR_FIELDS",
    "STATS_SUFFIX",
    "VECTOR_FIELDS",
    "KVEmbedConfig",
    "ResolvedConfig",
    "coerce_config",
    "field_names",
    "is_stats_path",
    "model_identity",
    "option_default",
    "option_help",
    "raw_vector_key",
    "vector_differences",
    "vector_fingerprint",
]
