"""Isotropy calibration: training-free post-processing of an embedder's unit vectors (numpy only).

A decoder's pooled states share a large common component (every cosine near 1): centring on a mean vector,
removing the top principal directions ("all-but-the-top", Mu & Viswanath 2018) or whitening with shrinkage
spreads them out. The statistics are fitted once per embedder configuration on calibration texts (or on a
user's own corpus: the same :func:`fit` on other vectors) and applied to the embedder's L2-normalised output:

    stats = fit(calibration_vectors, PostprocessSpec("center"))
    out = apply(vectors, stats)             # (n, out_dim) float32, unit norm, row-wise (batch-invariant)

Files (save, load, the shipped table) are in :mod:`kvembed_rag.postprocess.files`.

``kind``:

- ``"none"``: identity (vectors are only re-normalised);
- ``"center"``: subtract the mean;
- ``"remove-top"``: subtract the mean, then the projection on the top ``components`` principal directions;
- ``"whiten"``: subtract the mean, multiply by ``C_s^(-1/2)``, where ``C_s = (1 - s) C + s (tr C / d) I`` is the
  covariance shrunk towards a scaled identity (``shrinkage`` s in [0, 1], or ``"auto"``: the Ledoit-Wolf
  estimate of s). Shrinkage is needed: 222 calibration texts are fewer than a 640-wide model's dimensions.

``dim`` (optional) reduces the output to the top ``dim`` principal directions (PCA; for ``"whiten"`` each
scaled by ``(λ_i^s)^(-1/2)``), which gives FAISS smaller vectors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "KINDS",
    "PostprocessSpec",
    "PostprocessStats",
    "apply",
    "check_determined",
    "fit",
    "parse_spec",
    "spec_text",
]

KINDS = ("none", "center", "remove-top", "whiten")
Kind = Literal["none", "center", "remove-top", "whiten"]


@dataclass(frozen=True)
class PostprocessSpec:
    """What post-processing to fit and apply (frozen, JSON-serialisable).

    ``components``: principal directions removed by ``"remove-top"``. ``shrinkage``: for ``"whiten"``, a
    float in [0, 1] or ``"auto"`` (Ledoit-Wolf). ``dim``: reduce the output to that many principal
    directions (``None``: keep the model's width).
    """

    kind: Kind = "none"
    components: int = 0
    shrinkage: float | str = 0.0
    dim: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"post-processing kind must be one of {KINDS}; got {self.kind!r}")
        if isinstance(self.components, bool) or not isinstance(self.components, int) or self.components < 0:
            raise ValueError(f"components must be a non-negative int; got {self.components!r}")
        if self.kind == "remove-top" and self.components < 1:
            raise ValueError("kind='remove-top' needs components >= 1 (how many top directions to remove)")
        if self.kind != "remove-top" and self.components:
            raise ValueError(f"components applies to kind='remove-top' only; got it with kind={self.kind!r}")
        if isinstance(self.shrinkage, str):
            if self.shrinkage != "auto":
                raise ValueError(f"shrinkage must be a float in [0, 1] or 'auto'; got {self.shrinkage!r}")
        elif isinstance(self.shrinkage, bool) or not 0.0 <= float(self.shrinkage) <= 1.0:
            raise ValueError(f"shrinkage must be a float in [0, 1] or 'auto'; got {self.shrinkage!r}")
        if self.kind != "whiten" and self.shrinkage not in (0, 0.0):
            raise ValueError(f"shrinkage applies to kind='whiten' only; got it with kind={self.kind!r}")
        if self.dim is not None:
            if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
                raise ValueError(f"dim must be a positive int or None; got {self.dim!r}")
            if self.kind == "none":
                raise ValueError("dim needs a fitted kind ('center', 'remove-top' or 'whiten'), not 'none'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PostprocessSpec:
        unknown = set(data) - {"kind", "components", "shrinkage", "dim"}
        if unknown:
            raise ValueError(f"unknown post-processing options {sorted(unknown)}")
        return cls(**data)

    def __str__(self) -> str:
        parts: list[str] = [self.kind]
        if self.kind == "remove-top":
            parts.append(f"k={self.components}")
        if self.kind == "whiten":
            parts.append(f"shrinkage={self.shrinkage}")
        if self.dim is not None:
            parts.append(f"dim={self.dim}")
        return " ".join(parts)


@dataclass(frozen=True, eq=False)
class PostprocessStats:
    """Fitted statistics: ``mean`` (d,), optional ``removed`` directions (k, d) and ``projection`` (d, out_dim).

    ``apply`` computes ``y = x - mean``, then ``y - (y @ removed.T) @ removed`` (``"remove-top"``: k rows
    instead of a d x d matrix, so the file stays small), then ``y @ projection``, and re-normalises. ``n`` is
    the number of vectors fitted; ``shrinkage`` is
    the value used (the Ledoit-Wolf estimate for ``"auto"``), for the record.

    ``query_mean`` (d,), optional: queries are centred on it instead of ``mean``. A fit on one corpus's
    documents needs it: centring queries on the documents' mean leaves the gap between the query and the
    document prompt's vectors (and the corpus's own domain) in every query, and on QMSum passages that gap
    ranked the passages, not the question (docs/RESULTS.md, "the corpus-fit trap").
    """

    spec: PostprocessSpec
    mean: np.ndarray
    projection: np.ndarray | None
    n: int
    shrinkage: float | None = None
    removed: np.ndarray | None = None
    query_mean: np.ndarray | None = None

    @property
    def in_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def out_dim(self) -> int:
        return self.in_dim if self.projection is None else int(self.projection.shape[1])

    @property
    def fingerprint(self) -> str:
        """A short hash of the spec and the exact bytes of the statistics."""
        digest = hashlib.sha256(json.dumps(self.spec.to_dict(), sort_keys=True).encode())
        for array in (self.mean, self.removed, self.projection, self.query_mean):
            if array is not None:
                digest.update(str(array.shape).encode())
                digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """JSON record (for ``describe()`` and index provenance)."""
        record = {
            "spec": self.spec.to_dict(),
            "n": self.n,
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "shrinkage": self.shrinkage,
            "fingerprint": self.fingerprint,
        }
        if self.query_mean is not None:  # only then: statistics without one describe themselves as before
            record["query_mean"] = True
        return record


def _as_matrix(vectors: np.ndarray, name: str = "vectors") -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be a 2-D float array (n, dim); got shape {x.shape} dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf")
    return x.astype(np.float64)


def _ledoit_wolf(centred: np.ndarray, covariance: np.ndarray) -> float:
    """Ledoit & Wolf (2004) shrinkage intensity towards ``(tr C / d) I`` (as scikit-learn computes it)."""
    n, d = centred.shape
    mu = np.trace(covariance) / d
    delta = ((covariance - mu * np.eye(d)) ** 2).sum() / d
    squared = centred**2
    beta = ((squared.T @ squared).sum() / n - (covariance**2).sum()) / (d * n)
    return float(min(max(beta, 0.0), delta) / delta) if delta > 0 else 1.0


def _top_directions(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns), with a deterministic sign per vector."""
    values, vectors = np.linalg.eigh(covariance)
    values, vectors = values[::-1].clip(min=0.0), vectors[:, ::-1]
    # eigh's sign is arbitrary: make each vector's largest-magnitude entry positive, so fits are reproducible
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return values, vectors * signs


def check_determined(spec: PostprocessSpec, n: int, d: int) -> None:
    """Refuse a fit that would keep (or remove) principal directions the vectors do not determine.

    n centred vectors span at most n - 1 directions; beyond them the covariance (shrunk or not) has one repeated
    eigenvalue, and which basis of that subspace ``eigh`` returns is an accident of rounding. Whitening all d
    directions treats that subspace as a whole (any basis gives the same output); keeping the top ``dim`` of
    them, or removing the top ``components``, would cut through it: directions picked at random, different
    from one fit to the next (measured: two fits of ``whiten:0.3@256`` on 222 calibration texts whose inputs
    differed by 3e-7 gave SciFact vectors with cosine 0.85 between them).
    """
    determined = min(n - 1, d)
    start = spec.components if spec.kind == "remove-top" else 0  # directions removed first
    end = start + spec.dim if spec.dim is not None else start  # then kept up to here (exclusive)
    # a cut at b splits the repeated eigenspace (directions determined..d-1) when determined < b < d
    cuts = sorted(b for b in {start, end} if determined < b < d)
    if cuts:
        largest = determined - start
        hint = f", or keep at most dim={largest}" if spec.dim is not None and largest > 0 else ""
        raise ValueError(
            f"post-processing {spec_text(spec)} cuts the principal directions at {cuts[-1]}, but {n} vectors "
            f"determine only {determined} (n - 1); directions beyond those would be arbitrary. Fit on at least "
            f"{cuts[-1] + 1} texts{hint}"
        )


def fit(vectors: np.ndarray, spec: PostprocessSpec, *, query_vectors: np.ndarray | None = None) -> PostprocessStats:
    """Fit ``spec`` on ``vectors`` (n, d), the embedder's L2-normalised output for calibration or corpus texts.

    ``query_vectors`` (m, d), optional: raw vectors of texts embedded as queries (the calibration texts), whose
    mean becomes ``query_mean`` (queries are centred on it; see :class:`PostprocessStats`).
    Deterministic: the same input gives bit-identical statistics (float64 arithmetic, fixed eigenvector signs).
    """
    stats = _fit(vectors, spec)
    if query_vectors is None or spec.kind == "none":
        return stats
    queries = _as_matrix(query_vectors, "query_vectors")
    if queries.shape[1] != stats.in_dim or len(queries) < 1:
        raise ValueError(f"query_vectors must have shape (m >= 1, {stats.in_dim}); got {queries.shape}")
    return dataclasses.replace(stats, query_mean=queries.mean(axis=0).astype(np.float32))


def _fit(vectors: np.ndarray, spec: PostprocessSpec) -> PostprocessStats:
    x = _as_matrix(vectors)
    n, d = x.shape
    if spec.kind == "none":
        return PostprocessStats(spec, np.zeros(d, dtype=np.float32), None, n)
    if n < 2:
        raise ValueError(f"fitting {spec.kind!r} needs at least 2 vectors; got {n}")
    if spec.dim is not None and spec.dim > d:
        raise ValueError(f"dim={spec.dim} exceeds the vectors' width {d}")
    check_determined(spec, n, d)
    mean = x.mean(axis=0)
    centred = x - mean
    if spec.kind == "center" and spec.dim is None:
        return PostprocessStats(spec, mean.astype(np.float32), None, n)
    covariance = centred.T @ centred / n  # (d, d)
    shrinkage: float | None = None
    if spec.kind == "whiten":
        shrinkage = _ledoit_wolf(centred, covariance) if spec.shrinkage == "auto" else float(spec.shrinkage)
        covariance = (1.0 - shrinkage) * covariance + shrinkage * (np.trace(covariance) / d) * np.eye(d)
    values, directions = _top_directions(covariance)
    keep = d if spec.dim is None else spec.dim
    if spec.kind == "whiten":
        floor = max(values[0], 1e-12) * 1e-6  # no direction is amplified more than 1000x the top one
        projection = directions[:, :keep] / np.sqrt(np.maximum(values[:keep], floor))
        if spec.dim is None:
            projection = projection @ directions.T  # ZCA: stay in the input's coordinates
    elif spec.kind == "remove-top":
        top = directions[:, : spec.components].T  # (k, d)
        if spec.dim is None:
            return PostprocessStats(spec, mean.astype(np.float32), None, n, None, top.astype(np.float32))
        # with a reduction: the next `dim` directions, orthogonal to the removed ones
        projection = directions[:, spec.components : spec.components + keep]
    else:  # center with a reduction: plain PCA
        projection = directions[:, :keep]
    return PostprocessStats(spec, mean.astype(np.float32), projection.astype(np.float32), n, shrinkage)


def apply(vectors: np.ndarray, stats: PostprocessStats, role: str = "document") -> np.ndarray:
    """``normalise((x - mean) @ projection)`` as float32 unit rows (a single vector ``(d,)`` gives ``(out,)``);
    ``role="query"`` centres on ``query_mean`` when the statistics have one.

    Row-wise, so applying to rows one by one equals applying to the batch. A row that the post-processing maps
    to zero (e.g. the calibration mean itself) comes back as zeros rather than NaN.
    """
    x = np.asarray(vectors, dtype=np.float32)
    single = x.ndim == 1
    x = x[None, :] if single else x
    if x.ndim != 2 or x.shape[1] != stats.in_dim:
        raise ValueError(f"vectors must have shape (n, {stats.in_dim}); got {np.asarray(vectors).shape}")
    centre = stats.query_mean if role == "query" and stats.query_mean is not None else stats.mean
    out = (x - centre).astype(np.float64)
    if stats.removed is not None:
        removed = stats.removed.astype(np.float64)  # (k, d)
        out = np.stack([row - (removed @ row) @ removed for row in out]) if len(out) else out
    if stats.projection is not None:
        # one row at a time through the same float64 kernel: BLAS may block a matrix product differently by
        # batch size, and the result must not depend on what else is in the batch
        projection = stats.projection.astype(np.float64)
        out = np.stack([row @ projection for row in out]) if len(out) else np.zeros((0, stats.out_dim))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0).astype(np.float32)
    return out[0] if single else out


def parse_spec(text: str) -> PostprocessSpec:
    """``"none"``, ``"center"``, ``"remove-top:K"``, ``"whiten"`` (Ledoit-Wolf shrinkage) or ``"whiten:S"``,
    each optionally followed by ``"@DIM"`` (reduce to DIM principal directions), e.g. ``"whiten:auto@256"``."""
    body, _, dim_text = text.strip().partition("@")
    name, _, argument = body.partition(":")
    dim = int(dim_text) if dim_text.strip() else None
    kinds: dict[str, Kind] = {"none": "none", "center": "center", "remove-top": "remove-top", "whiten": "whiten"}
    kind = kinds.get(name.strip().lower())
    if kind is None:
        raise ValueError(f"post-processing kind must be one of {KINDS}; got {text!r}")
    if kind == "remove-top":
        return PostprocessSpec("remove-top", components=int(argument or 1), dim=dim)
    if kind == "whiten":
        arg = argument.strip() or "auto"
        return PostprocessSpec("whiten", shrinkage=arg if arg == "auto" else float(arg), dim=dim)
    if argument:
        raise ValueError(f"post-processing {kind!r} takes no ':' argument; got {text!r}")
    return PostprocessSpec(kind, dim=dim)


def spec_text(spec: PostprocessSpec) -> str:
    """The inverse of :func:`parse_spec` (the canonical spelling a config stores)."""
    text: str = spec.kind
    if spec.kind == "remove-top":
        text += f":{spec.components}"
    elif spec.kind == "whiten":
        text += f":{spec.shrinkage}"
    return text + (f"@{spec.dim}" if spec.dim is not None else "")
