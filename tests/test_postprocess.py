"""Post-processing (isotropy calibration): fitting, applying, saving and refusing mismatched statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kvembed_rag.postprocess import (
    PostprocessMismatchError,
    PostprocessSpec,
    PostprocessStats,
    apply,
    fit,
    load,
    read_header,
    save,
)

KEY = {"model": "abc123", "method": "kv", "layers": [4, 5], "bias": 1.0, "pooling": "hybrid", "prompts": {"d": "x"}}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def anisotropic(n: int = 300, d: int = 32, seed: int = 0) -> np.ndarray:
    """Unit vectors sharing a strong common direction, with very unequal spreads (every cosine high)."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(1.0, 0.01, d)
    common = np.zeros(d)
    common[0] = 5.0
    return _unit(common + rng.normal(size=(n, d)) * scales)


SPECS = [
    PostprocessSpec("center"),
    PostprocessSpec("remove-top", components=2),
    PostprocessSpec("whiten", shrinkage=0.2),
    PostprocessSpec("whiten", shrinkage="auto"),
    PostprocessSpec("whiten", shrinkage=0.1, dim=8),
    PostprocessSpec("center", dim=8),
    PostprocessSpec("remove-top", components=1, dim=8),
]


def test_center_with_zero_mean_is_identity() -> None:
    x = anisotropic(50)
    stats = PostprocessStats(PostprocessSpec("center"), np.zeros(x.shape[1], np.float32), None, 0)
    out = apply(x, stats)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x, atol=1e-7)
    none = fit(x, PostprocessSpec("none"))
    np.testing.assert_allclose(apply(x, none), x, atol=1e-7)


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_fit_is_deterministic_and_apply_batch_invariant(spec: PostprocessSpec) -> None:
    x = anisotropic()
    first, second = fit(x, spec), fit(x.copy(), spec)
    assert first.fingerprint == second.fingerprint
    assert np.array_equal(first.mean, second.mean)
    assert (first.projection is None) == (second.projection is None)
    if first.projection is not None and second.projection is not None:
        assert np.array_equal(first.projection, second.projection)
    if first.removed is not None and second.removed is not None:
        assert np.array_equal(first.removed, second.removed)
    batch = apply(x[:40], first)
    rows = np.stack([apply(row, first) for row in x[:40]])
    pairs = np.stack([apply(x[i : i + 2], first)[0] for i in range(40)])
    assert np.array_equal(batch, rows) and np.array_equal(batch, pairs)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-6)


def test_centering_removes_the_common_direction() -> None:
    x = anisotropic()
    before = (x @ x.T).mean()
    y = apply(x, fit(x, PostprocessSpec("center")))
    assert before > 0.8 and abs((y @ y.T).mean()) < 0.05


def test_whitening_makes_anisotropic_data_isotropic() -> None:
    x = anisotropic(n=2000, d=16)
    y = apply(x, fit(x, PostprocessSpec("whiten", shrinkage=0.0)))
    eigenvalues = np.linalg.eigvalsh(np.cov(y, rowvar=False))
    raw = np.linalg.eigvalsh(np.cov(x, rowvar=False))
    assert raw.max() / raw.min() > 1e3
    assert eigenvalues.max() / eigenvalues.min() < 2.0  # close to a multiple of the identity
    assert abs((y @ y.T).mean()) < 0.01


def test_shrinkage_keeps_whitening_finite_with_fewer_samples_than_dimensions() -> None:
    x = anisotropic(n=20, d=64)
    for shrinkage in (0.1, "auto"):
        stats = fit(x, PostprocessSpec("whiten", shrinkage=shrinkage))
        assert stats.shrinkage is not None and 0 < stats.shrinkage <= 1
        out = apply(anisotropic(n=10, d=64, seed=1), stats)
        assert np.isfinite(out).all()


def test_reduction_gives_the_requested_dim() -> None:
    x = anisotropic(d=32)
    for spec in (PostprocessSpec("whiten", shrinkage=0.1, dim=8), PostprocessSpec("center", dim=5)):
        stats = fit(x, spec)
        assert stats.out_dim == spec.dim
        assert apply(x, stats).shape == (len(x), spec.dim)
    with pytest.raises(ValueError, match="exceeds"):
        fit(x, PostprocessSpec("center", dim=33))


def test_fewer_vectors_than_directions_kept_is_refused_and_full_whitening_is_stable() -> None:
    # 20 vectors determine 19 directions of 64: beyond them the covariance has one repeated eigenvalue, and which
    # basis eigh returns is rounding noise; keeping or removing part of that subspace would be arbitrary
    x = anisotropic(n=20, d=64)
    for spec in (
        PostprocessSpec("whiten", shrinkage=0.3, dim=32),
        PostprocessSpec("center", dim=20),
        PostprocessSpec("remove-top", components=25),
        PostprocessSpec("remove-top", components=4, dim=16),
    ):
        with pytest.raises(ValueError, match="determine only 19"):
            fit(x, spec)
    for spec in (
        PostprocessSpec("whiten", shrinkage=0.3),  # every direction: the repeated eigenspace is scaled as a whole
        PostprocessSpec("whiten", shrinkage=0.3, dim=19),
        PostprocessSpec("whiten", shrinkage=0.3, dim=64),
        PostprocessSpec("remove-top", components=4, dim=15),
    ):
        queries = anisotropic(n=10, d=64, seed=1)
        nudged = _unit(x + np.random.default_rng(2).normal(size=x.shape).astype(np.float32) * 1e-6)
        a, b = apply(queries, fit(x, spec)), apply(queries, fit(nudged, spec))
        # a tiny change of the fit's input changes the similarities little (dim=64 may rotate the coordinates)
        assert np.abs(a @ a.T - b @ b.T).max() < 1e-3, spec


def test_remove_top_removes_the_top_directions() -> None:
    x = anisotropic(d=16)
    stats = fit(x, PostprocessSpec("remove-top", components=2))
    centred = x.astype(np.float64) - x.mean(axis=0)
    top = np.linalg.svd(centred, full_matrices=False)[2][:2]  # (2, d)
    assert np.abs(apply(x, stats) @ top.T).max() < 1e-5
    assert stats.projection is None and stats.removed is not None and stats.removed.shape == (2, 16)  # small file


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        PostprocessSpec("pca")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="components"):
        PostprocessSpec("remove-top")
    with pytest.raises(ValueError, match="shrinkage"):
        PostprocessSpec("whiten", shrinkage=1.5)
    with pytest.raises(ValueError, match="shrinkage applies"):
        PostprocessSpec("center", shrinkage=0.5)


def test_round_trip_save_load_is_exact(tmp_path: Path) -> None:
    x = anisotropic()
    for i, spec in enumerate(SPECS):
        stats = fit(x, spec)
        path = save(tmp_path / f"s{i}.safetensors", stats, key=KEY)
        back = load(path, key=KEY, spec=spec)
        assert back.spec == spec and back.n == stats.n and back.shrinkage == stats.shrinkage
        assert np.array_equal(back.mean, stats.mean)
        assert back.fingerprint == stats.fingerprint
        assert np.array_equal(apply(x, back), apply(x, stats))
        header = read_header(path)
        assert header["key"] == json.loads(json.dumps(KEY)) and header["spec"] == spec.to_dict()
    assert b"pickle" not in (tmp_path / "s0.safetensors").read_bytes()[:8]


def test_query_mean_centres_queries_only_and_round_trips(tmp_path: Path) -> None:
    docs = anisotropic(seed=1)
    shift = np.zeros(docs.shape[1])
    shift[1] = 0.8  # the query prompt's vectors sit elsewhere
    queries = _unit(anisotropic(seed=2) + shift)
    for spec in SPECS:
        plain = fit(docs, spec)
        per_role = fit(docs, spec, query_vectors=queries)
        assert per_role.query_mean is not None and plain.query_mean is None
        np.testing.assert_allclose(per_role.query_mean, queries.mean(axis=0), atol=1e-6)
        assert per_role.fingerprint != plain.fingerprint and per_role.describe()["query_mean"]
        assert "query_mean" not in plain.describe()  # statistics without one describe themselves as before
        # documents are untouched; queries are centred on their own mean
        assert np.array_equal(apply(docs, per_role), apply(docs, plain))
        moved = queries - per_role.query_mean + per_role.mean  # what centring on the query mean amounts to
        np.testing.assert_allclose(apply(queries, per_role, "query"), apply(moved, plain), atol=1e-5)
        assert np.array_equal(apply(queries, plain, "query"), apply(queries, plain))  # no query mean: as documents
        back = load(save(tmp_path / "q.safetensors", per_role, key=KEY), key=KEY, spec=spec)
        assert back.fingerprint == per_role.fingerprint and np.array_equal(back.query_mean, per_role.query_mean)
    with pytest.raises(ValueError, match="query_vectors"):
        fit(docs, SPECS[0], query_vectors=queries[:, :4])
    assert fit(docs, PostprocessSpec("none"), query_vectors=queries).query_mean is None


def test_planted_file_with_another_key_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path / "stats.safetensors", fit(anisotropic(), PostprocessSpec("center")), key=KEY)
    other = {**KEY, "layers": [8, 9]}
    with pytest.raises(PostprocessMismatchError, match="layers"):
        load(path, key=other)
    with pytest.raises(PostprocessMismatchError, match="not the requested"):
        load(path, key=KEY, spec=PostprocessSpec("whiten", shrinkage=0.1))


def test_tampered_statistics_are_refused(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    path = save(tmp_path / "stats.safetensors", fit(anisotropic(), PostprocessSpec("center")), key=KEY)
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    tensors["mean"] = tensors["mean"] + 0.01
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(PostprocessMismatchError, match="fingerprint"):
        load(path, key=KEY)


def test_changing_the_spec_or_the_stats_changes_the_fingerprint() -> None:
    x = anisotropic()
    prints = {fit(x, spec).fingerprint for spec in SPECS}
    assert len(prints) == len(SPECS)
    assert fit(x, SPECS[0]).fingerprint != fit(anisotropic(seed=3), SPECS[0]).fingerprint


def test_wrong_width_is_a_clear_error() -> None:
    stats = fit(anisotropic(d=16), PostprocessSpec("center"))
    with pytest.raises(ValueError, match=r"\(n, 16\)"):
        apply(np.zeros((3, 8), np.float32), stats)


def test_half_precision_file_loads_what_it_recorded(tmp_path: Path) -> None:
    x = anisotropic()
    stats = fit(x, PostprocessSpec("whiten", shrinkage=0.2, dim=8))
    full = save(tmp_path / "full.safetensors", stats, key=KEY)
    half = save(tmp_path / "half.safetensors", stats, key=KEY, half=True)
    assert half.stat().st_size < full.stat().st_size
    back = load(half, key=KEY)
    assert back.projection is not None and back.projection.dtype == np.float32
    assert read_header(half)["fingerprint"] == back.fingerprint
    np.testing.assert_allclose(apply(x, back), apply(x, stats), atol=2e-3)


def test_stats_key_ignores_dtype_and_length_but_not_the_method_options() -> None:
    from kvembed_rag.postprocess import stats_key

    base = {
        "model": {"spec": "default", "kind": "default", "identity": "sha"},
        "architecture": "A", "num_layers": 18, "dim": 640, "dtype": "float32", "method": "kv", "layers": [4, 5],
        "bias": 1.0, "token_prepending_layers": [], "pooling": "hybrid", "prompts": {"document": "x"},
        "max_length": 512,
    }  # fmt: skip
    key = stats_key(base)
    assert key["model"] == "sha" and "dtype" not in key and "max_length" not in key
    assert stats_key({**base, "dtype": "bfloat16", "max_length": 4096}) == key
    for change in ({"layers": [8, 9]}, {"bias": 2.0}, {"pooling": "last"}, {"method": "prompteol"}):
        assert stats_key({**base, **change}) != key


def test_shipped_index_entries_load_with_their_keys() -> None:
    from kvembed_rag.postprocess import SHIPPED_DIR, shipped_stats

    index = SHIPPED_DIR / "index.json"
    if not index.is_file():
        pytest.skip("no shipped statistics")
    entries = json.loads(index.read_text())
    assert entries
    for entry in entries:
        stats = shipped_stats(entry["key"], PostprocessSpec.from_dict(entry["spec"]))
        assert stats is not None and stats.fingerprint == entry["fingerprint"]
        assert stats.in_dim == entry["key"]["dim"]
        with pytest.raises(PostprocessMismatchError):
            load(SHIPPED_DIR / entry["file"], key={**entry["key"], "bias": -1.0})
    # the statistics shipped for layers="middle" are keyed by the window the rule gives today
    from kvembed_rag.layer_selection import middle_window

    middle = [e for e in entries if e.get("setting") == "kv-mid"]
    assert {e["model"] for e in middle} >= {"default", "smollm2"}
    assert all(e["key"]["layers"] == middle_window(e["key"]["num_layers"]) and e["default"] for e in middle)
    # postprocess="auto" picks the entry marked default: at most one per configuration
    defaults = [json.dumps(e["key"], sort_keys=True) for e in entries if e.get("default")]
    assert len(defaults) == len(set(defaults))
