"""The store of tuned defaults: what ``kvembed-rag tune`` saved for a model, read when ``layers="tuned"``.

One JSON file per model (keyed by the weights' identity, the layer count and the kv prompts) under
``$KVEMBED_CACHE/tuned/``. It is machine state, so it applies only when asked for (``layers="tuned"``);
``layers="auto"`` is the middle-depth window and gives the same vectors on every machine.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ._io import write_json_atomically
from .artifacts import artifact_path, file_lock
from .methods import get_method


def tuned_path(source: Any, num_layers: int) -> Path:
    """Where the tuned configuration of the model ``source`` (a ``ModelSource``) with the kv prompts is kept: the
    artifact store's path (``$KVEMBED_CACHE/tuned/<key hash>.json``). Unlike the other artifacts nothing is shipped
    or computed on a miss (only ``kvembed-rag tune`` writes it), so it uses the store's naming and lock, not its
    lookup."""
    key = {
        "model": source.identity or source.spec,
        "num_layers": num_layers,
        "prompts": get_method("kv").prompts.to_dict(),
    }
    return artifact_path("tuned", key, ".json", digits=16)


def load_tuned(source: Any, num_layers: int) -> dict[str, Any] | None:
    """The saved winner (``layers``, ``bias``, ``pooling``, ``postprocess`` or None ...) or None; an unreadable
    file is ignored (warning)."""
    path = tuned_path(source, num_layers)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
        layers = [int(i) for i in payload["layers"]]
        if not layers or max(layers) >= num_layers or min(layers) < 0:
            raise ValueError(f"layers {layers} do not fit a {num_layers}-layer model")
        postprocess = payload.get("postprocess")  # saved by a tune that searched post-processing too
        if postprocess is not None:
            from .config import KVEmbedConfig

            postprocess = KVEmbedConfig(postprocess=str(postprocess)).postprocess  # ConfigError: a ValueError
            if postprocess == "auto":
                raise ValueError("postprocess 'auto' is not a tuned choice")
        return {
            **payload,
            "layers": layers,
            "bias": float(payload["bias"]),
            "pooling": payload.get("pooling"),
            "postprocess": postprocess,
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"ignoring the tuned configuration {path}: {exc}", RuntimeWarning, stacklevel=3)
        return None


def save_tuned(source: Any, num_layers: int, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (must hold ``layers`` and ``bias``) as the model's tuned configuration; returns the path."""
    target = tuned_path(source, num_layers)
    with file_lock(target):  # two tunes finishing together: one complete file wins, never a mix
        write_json_atomically(target, payload)
    return target


def forget_tuned(source: Any, num_layers: int) -> Path:
    """Delete the model's tuned configuration (if any); returns the path it had."""
    target = tuned_path(source, num_layers)
    target.unlink(missing_ok=True)
    return target
