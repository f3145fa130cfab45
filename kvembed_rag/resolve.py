"""Resolution: a :class:`~kvembed_rag.config.KVEmbedConfig` and a loaded model become a ``ResolvedConfig``.

Everything the configuration leaves to the model is decided here, before an embedder exists: ``max_length`` at the
model's limit, the tokenizer's padding side, the method's pooling and prompts, the layer window (``"auto"``: the
middle-depth rule; ``"id"``: the intrinsic-dimension rule over the shipped calibration texts; ``"tuned"``: what
``kvembed-rag tune`` saved) and the
post-processing statistics (a file, shipped, cached, or fitted on the calibration texts). Calibration passes run
through :class:`~kvembed_rag.forward.Forward`, the same forward function an embedder encodes with.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import DEFAULT_BIAS, DEFAULT_MAX_LENGTH, KVEmbedConfig, ResolvedConfig
from .errors import ConfigError
from .forward import Forward
from .layer_selection import default_window, validate_layers
from .loading import ModelSource
from .methods import get_method
from .pooling import POOLINGS


def resolve(
    model: torch.nn.Module,
    tokenizer: Any,
    config: KVEmbedConfig,
    *,
    source: ModelSource,
    postprocess_stats: Any = None,
) -> ResolvedConfig:
    """``config`` resolved against ``model``: concrete options, how each was chosen, the post-processing statistics.

    A config that is already resolved (every option concrete, e.g. one an index recorded) is only checked against the
    model. ``postprocess_stats`` gives statistics directly (a fit on a user's corpus) instead of resolving them.
    """
    if config.is_resolved:
        options, provenance = check_resolved(model, config), {"layers": "given", "bias": "given", "pooling": "given"}
        selection = None
    else:
        options, provenance, selection = resolve_options(model, tokenizer, config, source=source)
    if postprocess_stats is not None:
        from .postprocess import spec_text

        text = options.postprocess
        if text in ("auto", "none"):
            text = spec_text(postprocess_stats.spec)
        resolved = options.replace(postprocess=text)
        how = "given"
    else:
        raw = Forward(model, tokenizer, ResolvedConfig.of(options.replace(postprocess="none")), source)
        postprocess_stats, how, text = resolve_postprocess(raw, options.postprocess)
        resolved = options.replace(postprocess=text)
    hidden_size = int(getattr(model, "config", None).hidden_size)  # type: ignore[union-attr]
    if postprocess_stats is not None and postprocess_stats.in_dim != hidden_size:
        raise ConfigError(
            f"post-processing statistics for {postprocess_stats.in_dim}-dim vectors cannot apply to this "
            f"{hidden_size}-dim model"
        )
    provenance.setdefault("postprocess", how)  # "tuned" when the tuned store chose it
    final = ResolvedConfig.of(resolved, provenance, postprocess_stats)
    return final if selection is None else _with_selection(final, selection)


def resolve_postprocess(raw: Forward, postprocess: str) -> tuple[Any, str, str]:
    """The statistics ``postprocess`` names for ``raw``'s vectors (a :class:`Forward` without post-processing),
    how they were found, and the canonical value a resolved config records (``"auto"`` becomes the choice)."""
    from .postprocess import resolve_stats, stats_key

    return resolve_stats(postprocess, stats_key(raw.describe()), raw.encode)


def resolve_options(
    model: torch.nn.Module, tokenizer: Any, config: KVEmbedConfig, *, source: ModelSource
) -> tuple[KVEmbedConfig, dict[str, str], Any]:
    """Every ``None`` / rule option of ``config`` but ``postprocess`` made concrete against ``model``.

    Returns the config, how each of ``layers``, ``bias`` and ``pooling`` was chosen, and the ``LayerSelection``
    when the intrinsic-dimension rule ran (``layers="id"``: the shipped calibration texts through a
    :class:`Forward` without re-routing, or the cached / shipped selection). ``layers="tuned"`` reads the store of
    tuned defaults and fails if ``kvembed-rag tune`` saved nothing.
    """
    model_config: Any = getattr(model, "config", None)
    num_layers = int(model_config.num_hidden_layers)
    spec = get_method(config.method)
    provenance = {"layers": "given", "bias": "given", "pooling": "given"}
    model_max = getattr(model_config, "max_position_embeddings", None)
    max_length = config.max_length
    if max_length is None:
        max_length = min(DEFAULT_MAX_LENGTH, model_max) if isinstance(model_max, int) else DEFAULT_MAX_LENGTH
    check_max_length(max_length, model_config)
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
    if layers == "default" or (layers in ("auto", "middle", "id") and not spec.reroute):
        # only kv re-routes: do not spend a calibration pass on a window other methods never use
        window = default_window(num_layers)
        provenance["layers"] = "default-window"
    elif layers == "id":
        from .layer_selection import select_layers

        # the selection reads hidden states without re-routing or post-processing (its cache key ignores both)
        calibrating = cheap.replace(layers=tuple(default_window(num_layers)), postprocess="none")
        selection = select_layers(Forward(model, tokenizer, ResolvedConfig.of(calibrating), source))
        window = list(selection.layers)
        provenance["layers"] = "intrinsic-dimension"
    elif layers in ("auto", "middle"):
        from .layer_selection import middle_window

        # "auto" is the middle-depth rule: on both offline models it, and neither the ID rule nor the label-free
        # proxy, found the window the label-scored searches chose (docs/RESULTS.md, issue 29); no calibration pass
        window = middle_window(num_layers)
        provenance["layers"] = "middle-depth"
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


def check_resolved(model: torch.nn.Module, config: KVEmbedConfig) -> KVEmbedConfig:
    """Validate a resolved config against the model (layer indices, max_length); returns it normalised."""
    model_config: Any = getattr(model, "config", None)
    num_layers = int(model_config.num_hidden_layers)
    assert isinstance(config.layers, tuple)
    layers = validate_layers(list(config.layers), num_layers) if config.layers else []
    check_max_length(config.max_length, model_config)
    return config.replace(layers=tuple(layers))


def check_max_length(max_length: int | None, model_config: Any) -> None:
    model_max = getattr(model_config, "max_position_embeddings", None)
    if isinstance(model_max, int) and max_length is not None and max_length > model_max:
        raise ConfigError(
            f"max_length={max_length} exceeds the model's max_position_embeddings={model_max}; "
            f"pass max_length<={model_max}"
        )


def _with_selection(resolved: ResolvedConfig, selection: Any) -> ResolvedConfig:
    import dataclasses

    return dataclasses.replace(resolved, layer_selection=selection)


__all__ = ["check_resolved", "resolve", "resolve_options", "resolve_postprocess"]
