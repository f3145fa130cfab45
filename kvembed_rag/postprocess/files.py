"""Post-processing statistics as files: safetensors with a JSON header, the shipped table, and resolution.

    save(path, stats, key=raw_vector_key(embedder.describe()))   # never pickle; atomic
    stats = load(path, key=...)                                  # refuses statistics fitted for another configuration
    stats, how = resolve_stats(postprocess, key, raw_encode)     # a file, shipped, cached on this machine, or fitted

The maths (fit, apply) is in :mod:`kvembed_rag.postprocess.transforms`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import cached_artifact
from ..config import is_stats_path, raw_vector_key
from ..errors import ConfigError, PostprocessMismatchError
from .transforms import PostprocessSpec, PostprocessStats, check_determined, fit, parse_spec

__all__ = [
    "FORMAT",
    "SHIPPED_DIR",
    "load",
    "model_default",
    "read_header",
    "resolve_stats",
    "save",
    "shipped_default",
    "shipped_stats",
    "stats_key",
]

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "postprocess"
FORMAT = "kvembed-rag/postprocess/1"
#: raw vectors of these texts, as documents, give the statistics (None: the shipped calibration texts)
RawEncode = Callable[[list[str], Any], np.ndarray]  # (texts, role) -> (n, hidden) raw vectors


def stats_key(description: dict[str, Any]) -> dict[str, Any]:
    """The key statistics are fitted for, from ``describe()`` of the embedder *without* post-processing."""
    return raw_vector_key(description)


def save(path: str | Path, stats: PostprocessStats, *, key: dict[str, Any], half: bool = False) -> Path:
    """Write ``stats`` as safetensors; the header records the format, spec, key and fingerprint.

    ``half`` stores the projection in float16 (half the bytes); the recorded fingerprint is then that of the
    rounded statistics, which is what :func:`load` returns (upcast to float32).
    """
    from safetensors.numpy import save_file

    tensors = {"mean": np.ascontiguousarray(stats.mean, dtype=np.float32)}
    if stats.projection is not None:
        tensors["projection"] = np.ascontiguousarray(stats.projection, dtype=np.float16 if half else np.float32)
    if stats.removed is not None:
        tensors["removed"] = np.ascontiguousarray(stats.removed, dtype=np.float32)
    if stats.query_mean is not None:
        tensors["query_mean"] = np.ascontiguousarray(stats.query_mean, dtype=np.float32)
    stored = PostprocessStats(
        stats.spec,
        tensors["mean"],
        tensors.get("projection"),
        stats.n,
        stats.shrinkage,
        tensors.get("removed"),
        tensors.get("query_mean"),
    )  # the fingerprint of what is on disk
    metadata = {
        "format": FORMAT,
        "spec": json.dumps(stats.spec.to_dict(), sort_keys=True),
        "key": json.dumps(key, sort_keys=True),
        "n": str(stats.n),
        "shrinkage": json.dumps(stats.shrinkage),
        "fingerprint": stored.fingerprint,
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".part")
    save_file(tensors, str(temporary), metadata=metadata)
    temporary.replace(target)  # atomic: a reader never sees half a file
    return target


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a statistics file (format, spec, key, n, shrinkage, fingerprint), decoded."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except SafetensorError as exc:  # truncated or not safetensors at all (its error is no OSError/ValueError)
        raise PostprocessMismatchError(f"{path}: not a readable safetensors file ({exc}); fit it again") from None
    if metadata.get("format") != FORMAT:
        raise PostprocessMismatchError(
            f"{path}: not a kvembed-rag post-processing file (format {metadata.get('format')!r})"
        )
    try:
        return {
            "format": metadata["format"],
            "spec": json.loads(metadata["spec"]),
            "key": json.loads(metadata["key"]),
            "n": int(metadata["n"]),
            "shrinkage": json.loads(metadata.get("shrinkage", "null")),
            "fingerprint": metadata.get("fingerprint"),
        }
    except (KeyError, ValueError) as exc:
        raise PostprocessMismatchError(f"{path}: damaged post-processing header ({exc!r}); fit it again") from None


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def load(path: str | Path, *, key: dict[str, Any], spec: PostprocessSpec | None = None) -> PostprocessStats:
    """Read statistics written by :func:`save`; raise :class:`PostprocessMismatchError` if they were fitted for
    another ``key`` (embedder configuration), for another ``spec`` (when given) or their bytes changed."""
    from safetensors.numpy import load_file

    header = read_header(path)
    wanted = json.loads(json.dumps(key, sort_keys=True))
    if header["key"] != wanted:
        differing = sorted(k for k in set(header["key"]) | set(wanted) if header["key"].get(k) != wanted.get(k))
        detail = "; ".join(
            f"{k}: file={_short(header['key'].get(k))} vs this={_short(wanted.get(k))}" for k in differing[:3]
        )
        raise PostprocessMismatchError(
            f"{path} was fitted for another embedder configuration (differs in {differing}: {detail}); "
            "refit the post-processing for this configuration (fit on its calibration vectors) or load the file "
            "that matches it"
        )
    stored = PostprocessSpec.from_dict(header["spec"])
    if spec is not None and stored != spec:
        raise PostprocessMismatchError(f"{path} holds post-processing {stored}, not the requested {spec}")
    from safetensors import SafetensorError

    try:
        tensors = {name: array.astype(np.float32) for name, array in load_file(str(path)).items()}
    except SafetensorError as exc:
        raise PostprocessMismatchError(f"{path}: unreadable statistics ({exc}); fit them again") from None
    if "mean" not in tensors:
        raise PostprocessMismatchError(f"{path}: no 'mean' tensor (damaged file?); fit it again")
    stats = PostprocessStats(
        stored,
        tensors["mean"],
        tensors.get("projection"),
        header["n"],
        header["shrinkage"],
        tensors.get("removed"),
        tensors.get("query_mean"),
    )
    if header["fingerprint"] is not None and stats.fingerprint != header["fingerprint"]:
        raise PostprocessMismatchError(f"{path}: statistics do not match their recorded fingerprint (file damaged?)")
    return stats


def shipped_default(key: dict[str, Any]) -> PostprocessSpec | None:
    """The post-processing chosen for this exact configuration by the dev-data study (docs/RESULTS.md,
    "Post-processing"), if the package ships one marked ``default``; ``None`` otherwise."""
    wanted = json.loads(json.dumps(key, sort_keys=True))
    for entry in _shipped_index():
        if entry.get("default") and entry["key"] == wanted:
            return PostprocessSpec.from_dict(entry["spec"])
    return None


#: what must match for a shipped default's *spec* to carry over to another configuration of the same backbone
_MODEL_FIELDS = ("model", "architecture", "num_layers", "dim", "method")


def model_default(key: dict[str, Any]) -> PostprocessSpec | None:
    """The post-processing the package ships as the default for this backbone and method under *other* settings
    (another window, bias, pooling or prompts), when all of those defaults agree; ``None`` otherwise.

    ``postprocess="auto"`` fits it on the calibration texts for a configuration nothing was shipped for: on every
    kv setting measured on the offline models (windows, ``layers=[]``, biases, poolings) the model's whitening
    beat raw vectors by far (docs/RESULTS.md), so raw vectors would be a silent loss."""
    wanted = json.loads(json.dumps(key, sort_keys=True))
    specs = {
        json.dumps(entry["spec"], sort_keys=True)
        for entry in _shipped_index()
        if entry.get("default") and all(entry["key"].get(f) == wanted.get(f) for f in _MODEL_FIELDS)
    }
    return PostprocessSpec.from_dict(json.loads(specs.pop())) if len(specs) == 1 else None


def _shipped_index() -> list[dict[str, Any]]:
    index_path = SHIPPED_DIR / "index.json"
    if not index_path.is_file():
        return []
    entries: list[dict[str, Any]] = json.loads(index_path.read_text(encoding="utf-8"))
    return entries


def shipped_stats(key: dict[str, Any], spec: PostprocessSpec) -> PostprocessStats | None:
    """The statistics shipped in ``kvembed_rag/data/postprocess/`` for this key and spec, or ``None``."""
    wanted = json.loads(json.dumps(key, sort_keys=True))
    for entry in _shipped_index():
        if entry["key"] == wanted and entry["spec"] == spec.to_dict():
            return load(SHIPPED_DIR / entry["file"], key=key, spec=spec)
    return None


def resolve_stats(
    postprocess: str, key: dict[str, Any], raw_encode: RawEncode
) -> tuple[PostprocessStats | None, str, str]:
    """The statistics ``postprocess`` (a config's value) names for the raw vectors keyed ``key``, where they came
    from, and the canonical spelling of what was chosen (``"auto"`` becomes the shipped choice or ``"none"``).

    ``"auto"``: the statistics shipped for this exact configuration (``"shipped-default"``); else, for another
    setting of a shipped backbone and method, the same spec fitted for this configuration (``"model-default"``,
    :func:`model_default`); else ``"none"`` (a model nothing was measured on).

    ``"file"``: a statistics file (checked against ``key``); ``"shipped"`` with the package; ``"cached"`` on this
    machine; ``"fitted"`` now on the 222 shipped calibration texts (``raw_encode(texts, "document")``), then cached.
    Deterministic: the same configuration fits the same statistics on every machine.
    """
    from .transforms import spec_text

    if postprocess == "none":
        return None, "none", "none"
    if is_stats_path(postprocess):
        path = Path(postprocess).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"postprocess={postprocess!r}: no such statistics file; write one with 'kvembed-rag postprocess fit'"
                " or KVEmbedder.save_postprocess(path), or give a kind such as 'center'"
            )
        try:
            return load(path, key=key), "file", str(path.resolve())
        except PostprocessMismatchError as exc:
            raise PostprocessMismatchError(
                f"postprocess={postprocess!r}: {exc}. 'kvembed-rag postprocess show {path}' prints the configuration "
                "the file was fitted for; 'kvembed-rag postprocess fit' fits one for this configuration"
            ) from None
        except OSError as exc:
            raise ConfigError(f"postprocess={postprocess!r}: cannot read the statistics file ({exc})") from None
    if postprocess == "auto":
        chosen = shipped_default(key)  # shipped data, the same on every machine
        how_auto = "shipped-default"
        if chosen is None:  # another setting of a shipped backbone: its spec, fitted for this configuration
            chosen, how_auto = model_default(key), "model-default"
        if chosen is None:
            return None, "none", "none"
        spec = chosen
    else:
        spec, how_auto = parse_spec(postprocess), ""

    def compute() -> PostprocessStats:
        from ..layer_selection import load_calibration

        try:
            return fit(raw_encode(load_calibration(), "document"), spec)
        except ValueError as exc:  # e.g. @DIM beyond what the calibration texts determine
            raise ConfigError(
                f"postprocess={postprocess!r} cannot be fitted on the shipped calibration texts: {exc}; or fit it on "
                "your own texts with embedder.fit_postprocess(texts) / 'kvembed-rag postprocess fit'"
            ) from None

    def read(path: Path) -> PostprocessStats:
        stats = load(path, key=key, spec=spec)
        check_determined(spec, stats.n, stats.in_dim)  # a fit older releases allowed: refit (refused)
        return stats

    stats, how = cached_artifact(
        "postprocess",
        {"key": key, "spec": spec.to_dict()},
        suffix=".safetensors",
        shipped=lambda: shipped_stats(key, spec),
        read=read,
        write=lambda path, value: save(path, value, key=key),
        compute=compute,
        errors=(OSError, ValueError, KeyError),
    )
    return stats, how_auto or {"computed": "fitted"}.get(how, how), spec_text(spec)


def calibration_query_mean(key: dict[str, Any], raw_encode: RawEncode) -> np.ndarray:
    """``(1, d)``: the mean raw vector of the 222 shipped calibration texts embedded as queries
    (``raw_encode(texts, "query")``) for the raw vectors keyed ``key``; computed once per configuration and kept in
    the artifact cache. A fit on one corpus's documents centres queries on it (``fit(..., query_vectors=...)``)."""
    import io

    from .._io import write_bytes_atomically

    def read(path: Path) -> np.ndarray:
        mean = np.load(path, allow_pickle=False)
        if mean.ndim != 2 or mean.shape[0] != 1 or not np.isfinite(mean).all():
            raise ValueError(f"shape {mean.shape}, not (1, d)")
        return mean

    def write(path: Path, mean: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, mean)
        write_bytes_atomically(path, buffer.getvalue())

    def compute() -> np.ndarray:
        from ..layer_selection import load_calibration

        return (
            np.asarray(raw_encode(load_calibration(), "query"), np.float64)
            .mean(axis=0, keepdims=True)
            .astype(np.float32)
        )

    mean, _ = cached_artifact("query-mean", key, suffix=".npy", read=read, write=write, compute=compute)
    return mean
