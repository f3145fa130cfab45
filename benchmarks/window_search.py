"""Where does re-routing pay? Window start x length x bias x pooling, each point beside re-routing off.

    nice -n 10 python benchmarks/window_search.py --model default --starts 0-17:2 --lengths 1,2,3 --biases 1,2 \
        --sts-pairs 150 --banking 150 --scifact-queries 30 --scifact-docs 200 --json docs/results/window_search.json

The dev samples are ``postprocess_study.py``'s (each family has a choosing sample ``A`` and a disjoint confirming
sample ``B``, seeded): STS-B dev pairs (Spearman), SciFact dev queries over one shared haystack (nDCG@10),
Banking77 logistic regression (accuracy) and k-means on the same texts (V-measure); QMSum on request.

Every (window, bias, pooling) point is scored with the same post-processing as the shipped default, so the
comparison is fair. ``postprocess="auto"`` resolves to shipped statistics only for the exact shipped
configuration; any other window (and ``layers=[]``) would silently get raw vectors. Here ``auto`` means the spec
the shipped configuration resolves to (Gemma: ``whiten:0.6``), fitted for each point on that point's own vectors
of the 222 calibration texts, exactly as ``resolve_postprocess`` fits any non-shipped configuration (on the
shipped point the fit is checked against the shipped file). ``none`` (raw vectors) is scored as well.

Each pooling's reference is the same embedder with ``layers=[]`` (no re-routing; bias and window do not apply),
so every row carries its own ablation (``vs off``). Ranks follow ``postprocess_study.py``: on each family's
sample A, 1 + the number of candidates strictly better, averaged over the families (the off points compete
too); B chose nothing and gives the verdict.

Raw vectors go through the evaluation's on-disk cache (a re-run costs only the scoring); the ``--json`` file
is rewritten after every point and points already in it are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from postprocess_study import DATA, Sample, build_samples, mean_ranks

FAMILY_ORDER = ("sts", "banking", "clustering", "scifact", "qmsum")


def parse_ints(text: str) -> list[int]:
    """``0-17:2`` (a range with a step, inclusive), ``1,2,3`` or a mix: ``0,4-8:2``."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        span, _, step = part.partition(":")
        first, sep, last = span.partition("-")
        if sep:
            out += range(int(first), int(last) + 1, int(step or 1))
        else:
            out.append(int(first))
    return list(dict.fromkeys(out))


def windows(starts: list[int], lengths: list[int], num_layers: int) -> list[list[int]]:
    """Every start x length that fits in the model (windows running past the last layer are dropped)."""
    return [list(range(s, s + n)) for s in starts for n in lengths if s >= 0 and s + n <= num_layers]


def label(layers: list[int], bias: float, pooling: str) -> str:
    if not layers:
        return f"off/{pooling}"
    return f"{layers[0]}-{layers[-1]}/b{bias:g}/{pooling}"


def resolve_auto(base: Any) -> Any:
    """The post-processing spec ``postprocess="auto"`` gives the shipped configuration (``none`` if nothing
    is shipped for it)."""
    from kvembed_rag import postprocess as pp

    spec = pp.shipped_default(pp.stats_key(base.describe()))
    return spec if spec is not None else pp.PostprocessSpec("none")


def check_shipped_fit(base: Any, spec: Any, cal: np.ndarray, probe: np.ndarray) -> float | None:
    """The smallest cosine, over ``probe`` vectors, between the shipped statistics of the shipped point and the
    statistics this script fits for it (1.0: the script reproduces what users get)."""
    from kvembed_rag import postprocess as pp

    shipped = pp.shipped_stats(pp.stats_key(base.describe()), spec)
    if shipped is None:
        return None
    a, b = pp.apply(probe, shipped), pp.apply(probe, pp.fit(cal, spec))
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(cos.min())


POOLINGS = ("hybrid", "mean", "last")


@contextlib.contextmanager
def capturing_poolings() -> Iterator[list[tuple[list[int], np.ndarray, np.ndarray]]]:
    """While active, every forward pass also records each row's un-normalised last-token and mean states with
    the rows' input indices, so one pass yields all three poolings: ``pooling.pool`` computes ``hybrid`` as
    normalise(last + mean), ``last`` as normalise(last), ``mean`` as normalise(mean)."""
    import kvembed_rag.forward as forward
    from kvembed_rag.pooling import last_token, masked_mean

    records: list[tuple[list[int], np.ndarray, np.ndarray]] = []
    states: list[tuple[np.ndarray, np.ndarray]] = []
    pool, split = forward.pool, forward.Forward._forward_splitting

    def recording_pool(hidden: Any, how: str, last_index: Any, pool_mask: Any) -> Any:
        h = hidden.float()  # (B, T, H)
        states.append((last_token(h, last_index).cpu().numpy(), masked_mean(h, pool_mask).cpu().numpy()))
        return pool(hidden, how, last_index, pool_mask)

    def recording_split(self: Any, batch: list[int], encoded: Any) -> np.ndarray:
        before = len(states)
        out = split(self, batch, encoded)
        if len(states) != before + 1:  # an out-of-memory split: the rows came in pieces
            raise RuntimeError("a batch was split; lower batch_tokens for the pooling capture")
        records.append((batch, *states[-1]))
        return out

    forward.pool, forward.Forward._forward_splitting = recording_pool, recording_split  # type: ignore[method-assign]
    try:
        yield records
    finally:
        forward.pool, forward.Forward._forward_splitting = pool, split  # type: ignore[method-assign]


@contextlib.contextmanager
def rerouted_source(source: str) -> Iterator[str]:
    """A prototype of another re-routed state (issue 29: measure before adding an option): ``last`` is the
    package's (each row's final real key/value); ``mean:K`` re-routes the mean key and value of each row's last
    ``K`` real tokens (the end of the compression prompt; keys after RoPE, as the package's). Yields the label
    suffix that keeps its points and cached vectors apart from the package's."""
    if source == "last":
        yield ""
        return
    kind, _, count = source.partition(":")
    if kind != "mean" or not count.isdigit() or int(count) < 1:
        raise SystemExit(f"--reroute-source must be 'last' or 'mean:K' (K >= 1); got {source!r}")
    import torch

    import kvembed_rag.attention as attention

    original, width = attention._last_token_kv, int(count)

    def mean_of_last(plan: Any, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(key.shape[0], device=key.device)[:, None]  # (B, 1)
        last = plan.last_index.to(key.device)[:, None]  # (B, 1)
        ends = (last - torch.arange(width, device=key.device)[None, :]).clamp(min=0)  # (B, K)
        # (B, K, Hkv, D) -> mean over the K tokens -> (B, Hkv, 1, D)
        return key[rows, :, ends, :].mean(dim=1).unsqueeze(2), value[rows, :, ends, :].mean(dim=1).unsqueeze(2)

    attention._last_token_kv = mean_of_last  # type: ignore[assignment]
    try:
        yield f"/meankv{width}"
    finally:
        attention._last_token_kv = original  # type: ignore[assignment]


def encode_all_poolings(embedder: Any, cache: Any, texts: list[str], role: str) -> tuple[dict[str, np.ndarray], int]:
    """Vectors for ``texts`` under every pooling of ``embedder``'s point, from one forward pass (written to the
    evaluation cache under each pooling's own fingerprint, so ``cache.encode`` finds them later). Returns the
    vectors and the tokens computed (0 when all three were cached)."""
    from kvembed_rag.eval.cache import EncodeStats, _atomic_save

    variants = {p: embedder if embedder.pooling == p else embedder.variant(pooling=p) for p in POOLINGS}
    paths = {p: cache._paths(v, texts, role) for p, v in variants.items()}
    if all(vp.is_file() and sp.is_file() for vp, sp in paths.values()):
        return {p: cache.encode(v, texts, role)[0] for p, v in variants.items()}, 0
    start = time.perf_counter()
    with capturing_poolings() as records:
        hybrid, _ = cache._compute(variants["hybrid"], texts, role)
    seconds = time.perf_counter() - start
    last = np.zeros((len(texts), embedder.dim), np.float32)
    mean = np.zeros_like(last)
    for rows, last_rows, mean_rows in records:
        last[rows], mean[rows] = last_rows, mean_rows

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    if not np.allclose(hybrid, unit(last + mean), atol=1e-5):  # the capture must see what pool() pooled
        raise RuntimeError("captured last/mean states do not reproduce the hybrid vectors")
    out = {"hybrid": hybrid, "mean": unit(mean), "last": unit(last)}
    tokens = sum(len(e.ids) for e in embedder.tokenize(texts, role))
    for p, (vectors_path, stats_path) in paths.items():
        _atomic_save(vectors_path, stats_path, out[p], EncodeStats(seconds, tokens, 0))
    return out, tokens


class EmbedFilter:
    """EmbedFilter (arXiv 2606.07502; ``CentreChen/EmbFilter``): keep the middle band of the unembedding
    matrix's right singular directions, ``k = d // ratio`` of them, dropping the ``(d - k) // 2`` with the largest
    singular values (frequency-aligned: they write frequent, uninformative tokens) and the smallest rest. Their
    code applies it to every final-layer state (after the final norm) before pooling; it is linear, so on pooled
    vectors of mean, last or hybrid pooling it is the same (the L2 norm is a per-row scale).

    ``Vh`` comes from ``W^T W`` (``d x d``, float64): its eigenvectors are ``W``'s right singular vectors."""

    def __init__(self, weight: Any, ratio: int = 2) -> None:
        import torch

        w = weight.detach().float()
        gram = torch.zeros(w.shape[1], w.shape[1], dtype=torch.float64)
        for start in range(0, w.shape[0], 65536):  # (V, d) in slices: the float64 copy stays small
            chunk = w[start : start + 65536].double()
            gram += chunk.T @ chunk
        values, vectors = torch.linalg.eigh(gram)  # ascending
        order = torch.argsort(values, descending=True)
        self.vh = vectors[:, order].T.numpy().astype(np.float32)  # (d, d) rows: largest singular value first
        d = self.vh.shape[0]
        k = d // ratio
        start = (d - k) // 2
        self.kept = self.vh[start : start + k]  # (k, d)
        self.ratio = ratio

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        out = vectors @ self.kept.T  # (n, k)
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def transform_for(spec: Any, cal: np.ndarray, fit: Any, apply: Any) -> Any:
    """A function of raw vectors for one post-processing column: a post-processing spec fitted on the point's
    calibration vectors, EmbedFilter, or EmbedFilter followed by a spec fitted on the filtered calibration."""
    if isinstance(spec, EmbedFilter):
        return spec
    if isinstance(spec, tuple):  # (EmbedFilter, spec)
        filt, inner = spec
        stats = fit(filt(cal), inner)
        return lambda v: apply(filt(v), stats)
    stats = fit(cal, spec)
    return lambda v: apply(v, stats)


def score_point(
    embedder: Any,
    samples: list[Sample],
    cache: Any,
    calibration: list[str],
    specs: dict[str, Any],
    all_poolings: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Embed this point's texts once (cached), fit every spec on its calibration vectors, score each sample.
    With ``all_poolings`` the forward pass also fills the cache for the point's other two poolings."""
    from kvembed_rag.postprocess import apply, fit

    start = time.perf_counter()
    tokens = 0

    def get(texts: list[str], role: str, max_length: int | None) -> np.ndarray:
        nonlocal tokens
        encoder = embedder if max_length is None else embedder.variant(max_length=max_length)
        if all_poolings and cache.root is not None:
            vectors, computed = encode_all_poolings(encoder, cache, texts, role)
            tokens += computed
            return vectors[embedder.pooling]
        vectors, stats = cache.encode(encoder, texts, role)
        tokens += 0 if stats.cached else stats.tokens
        return vectors

    cal = get(calibration, "document", None)
    fitted = {name: transform_for(spec, cal, fit, apply) for name, spec in specs.items()}
    rows = []
    for s in samples:
        raw = {p: get(t, r, s.max_length) for p, (t, r) in s.texts.items()}
        for name, transform in fitted.items():
            value = s.score({p: transform(v) for p, v in raw.items()})
            rows.append(dict(family=s.family, sample=s.name, post=name, score=round(float(value), 4), **s.extra))
    return rows, {"seconds": round(time.perf_counter() - start, 1), "tokens_computed": tokens}


def table_of(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[tuple[str, str], float]]:
    table: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
    for r in rows:
        table.setdefault((r["setting"], r["post"]), {})[(r["family"], r["sample"])] = r["score"]
    return table


def _flat(entry: dict[str, Any]) -> dict[str, Any]:
    """A per-family entry for JSON: (family, sample) keys become 'family/sample'."""
    return {k: v if isinstance(v, str) else {f"{a}/{b}": x for (a, b), x in v.items()} for k, v in entry.items()}


def report(rows: list[dict[str, Any]], shipped: str, top: int) -> dict[str, Any]:
    """Print, per post-processing: the top points by mean rank on A with A / B and each one's gain over its own
    pooling's ``layers=[]``; then per family the best window on A against off and shipped, on A and B."""
    table = table_of(rows)
    meta = {r["setting"]: r for r in rows}
    posts = list(dict.fromkeys(r["post"] for r in rows))
    families = [f for f in FAMILY_ORDER if any(r["family"] == f for r in rows)]
    summary: dict[str, Any] = {}
    for post in posts:
        cands = [c for c in table if c[1] == post and all((f, s) in table[c] for f in families for s in "AB")]
        if not cands:
            continue
        ranks = mean_ranks(table, cands, families)
        order = sorted(cands, key=lambda c: (ranks[c], -np.mean([table[c][(f, "A")] for f in families])))

        def off_of(c: tuple[str, str], post: str = post) -> tuple[str, str]:
            return (f"off/{meta[c[0]]['pooling']}", post)

        head = " | ".join(f"{f} A / B (vs off)" for f in families)
        print(f"\n## post-processing {post}: {len(cands)} candidates, mean rank over {len(families)} families on A")
        print(f"| rank A | point | mean rank A | {head} | mean B (vs off) |")
        print("|---|---|---|" + "---|" * len(families) + "---|")
        shown = order[:top] + [c for c in order[top:] if c[0] == shipped or c[0].startswith("off/")]
        for c in shown:
            off = table.get(off_of(c), {})
            cells = []
            for f in families:
                a, b = table[c][(f, "A")], table[c][(f, "B")]
                delta = b - off[(f, "B")] if (f, "B") in off else float("nan")
                cells.append(f"{a:.4f} / {b:.4f} ({delta:+.4f})")
            mean_b = np.mean([table[c][(f, "B")] for f in families])
            mean_off = np.mean([off[(f, "B")] for f in families]) if off else float("nan")
            name = c[0] + (" **shipped**" if c[0] == shipped else "")
            print(
                f"| {order.index(c) + 1} | {name} | {ranks[c]:.2f} | "
                + " | ".join(cells)
                + f" | {mean_b:.4f} ({mean_b - mean_off:+.4f}) |"
            )
        winner = order[0]
        print(f"A winner: {winner[0]} (mean rank {ranks[winner]:.2f}); shipped {shipped}: "
              f"{ranks.get((shipped, post), float('nan')):.2f}")  # fmt: skip
        # per family: the best window on A (re-routing on only), against off and shipped
        print(f"\n| family ({post}) | best window on A | A / B | `layers=[]` A / B | shipped A / B | best − off on B |")
        print("|---|---|---|---|---|---|")
        per_family = {}
        routed = [c for c in cands if not c[0].startswith("off/")]
        for f in families:
            best = max(routed, key=lambda c: table[c][(f, "A")])
            off = table[off_of(best)]
            ship = table.get((shipped, post), {})
            print(
                f"| {f} | {best[0]} | {table[best][(f, 'A')]:.4f} / {table[best][(f, 'B')]:.4f} | "
                f"{off[(f, 'A')]:.4f} / {off[(f, 'B')]:.4f} | "
                f"{ship.get((f, 'A'), float('nan')):.4f} / {ship.get((f, 'B'), float('nan')):.4f} | "
                f"{table[best][(f, 'B')] - off[(f, 'B')]:+.4f} |"
            )
            per_family[f] = {"best_on_A": best[0], "best": table[best], "off": off, "shipped": ship}
        summary[post] = {
            "winner_on_A": winner[0],
            "mean_rank": {c[0]: round(r, 3) for c, r in ranks.items()},
            "per_family": {f: _flat(d) for f, d in per_family.items()},
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--starts", default="0-17:2", help="window starts: '0-17:2', '4,8,12' (default: every 2nd)")
    parser.add_argument("--lengths", default="1,2,3")
    parser.add_argument("--biases", default="1,2")
    parser.add_argument("--poolings", default="hybrid")
    parser.add_argument(
        "--posts",
        default="auto,none",
        help="'auto' (the shipped spec, fitted per point), 'none', 'embfilter' (EmbedFilter, keep the middle half), "
        "'embfilter+auto' (then the shipped spec, fitted on the filtered vectors)",
    )
    parser.add_argument("--families", default="sts,banking,clustering,scifact")
    parser.add_argument(
        "--samples", default="A,B", help="A chooses, B confirms; C (a third disjoint block) re-checks a choice"
    )
    parser.add_argument("--sts-pairs", type=int, default=150)
    parser.add_argument("--banking", type=int, default=150, help="training and test texts per sample")
    parser.add_argument("--banking-intents", type=int, default=20)
    parser.add_argument("--scifact-queries", type=int, default=30)
    parser.add_argument("--scifact-docs", type=int, default=200)
    parser.add_argument("--scifact-max-length", type=int, default=256)
    parser.add_argument("--qmsum-meetings", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a shared machine: 1)")
    parser.add_argument(
        "--reroute-source",
        default="last",
        help="what re-routing prepends: 'last' (the package's), 'mean:K' (a prototype: the mean K/V of the last K "
        "tokens; its vectors are cached apart)",
    )
    parser.add_argument("--top", type=int, default=12, help="rows of the ranked table")
    parser.add_argument("--report-only", action="store_true", help="print the table of --json, compute nothing")
    parser.add_argument("--json", type=Path, help="rows are written here after every point (and resumed from)")
    args = parser.parse_args(argv)

    done: dict[str, Any] = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    rows: list[dict[str, Any]] = done.get("rows", [])
    if args.report_only:
        summary = report(rows, done.get("shipped", ""), args.top)
        if args.json:
            done["summary"] = summary
            args.json.write_text(json.dumps(done, indent=1))
        return 0
    if not DATA.is_dir():
        print(f"no data at {DATA}: skipping", file=sys.stderr)
        return 0

    import torch

    from kvembed_rag import KVEmbedder
    from kvembed_rag import postprocess as pp
    from kvembed_rag._io import cache_root
    from kvembed_rag.eval.cache import EmbeddingCache
    from kvembed_rag.layer_selection import load_calibration

    torch.set_num_threads(args.threads)
    # the shipped configuration (the default window, bias and pooling), without post-processing; until
    # 2026-12-06 the default window was the ID rule's ([4, 5] on Gemma), which earlier tables mark as shipped
    base = KVEmbedder.from_pretrained(
        args.model, method="kv", layers="auto", max_length=args.max_length, dtype=args.dtype, postprocess="none"
    )
    auto = resolve_auto(base)
    specs: dict[str, Any] = {}
    embed_filter: EmbedFilter | None = None
    for name in filter(None, (p.strip() for p in args.posts.split(","))):
        if name.startswith("embfilter"):  # embfilter, embfilter+auto: EmbedFilter (keep 1/2), then a spec
            if embed_filter is None:
                embed_filter = EmbedFilter(base.model.get_input_embeddings().weight)  # tied: the unembedding
            _, _, then = name.partition("+")
            inner = auto if then == "auto" else (pp.parse_spec(then) if then else None)
            label_ = "embfilter:2" + (f"+{'auto=' if then == 'auto' else ''}{inner}" if inner is not None else "")
            specs[label_] = embed_filter if inner is None else (embed_filter, inner)
            continue
        spec = auto if name == "auto" else pp.parse_spec(name)
        specs[f"auto={spec}" if name == "auto" else str(spec)] = spec
    shipped = label(base.layers, base.bias, base.pooling)
    print(f"{args.model}: {base.num_layers} layers, shipped point {shipped}, auto -> {auto}", flush=True)

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    samples = build_samples(args, base, families)
    print(", ".join(f"{s.family}/{s.name} {s.extra}" for s in samples), flush=True)
    calibration = load_calibration()
    source = contextlib.ExitStack()
    suffix = source.enter_context(rerouted_source(args.reroute_source))
    # a prototype's vectors would share the package's cache keys (the fingerprint does not know the patch)
    cache = EmbeddingCache(cache_root() / f"eval{suffix.replace('/', '-')}" if suffix else "default")

    # order: per pooling, re-routing off first (every later row compares to it), the shipped point, then the grid
    # bias by bias and length by length in the order given, so a run cut short holds complete sweeps over depth
    points: list[tuple[list[int], float, str]] = []
    poolings = [p.strip() for p in args.poolings.split(",") if p.strip()]
    for pooling in poolings:
        points.append(([], base.bias, pooling))
        if pooling == base.pooling and not suffix:  # a prototype source runs only the grid asked for
            points.append((list(base.layers), base.bias, base.pooling))
        for bias in (float(b) for b in args.biases.split(",")):
            for length in parse_ints(args.lengths):
                for window in windows(parse_ints(args.starts), [length], base.num_layers):
                    if (window, bias, pooling) not in points:
                        points.append((window, bias, pooling))
    needed = {(s.family, s.name, post) for s in samples for post in specs}
    have: dict[str, set[tuple[str, str, str]]] = {}
    for r in rows:
        have.setdefault(r["setting"], set()).add((r["family"], r["sample"], r["post"]))
    timings: dict[str, Any] = done.get("timings", {})
    for i, (layers, bias, pooling) in enumerate(points):
        name = label(layers, bias, pooling) + (suffix if layers else "")
        if needed <= have.get(name, set()):
            continue
        embedder = base.variant(layers=layers, bias=bias, pooling=pooling)
        scored, cost = score_point(embedder, samples, cache, calibration, specs, all_poolings=len(poolings) > 1)
        rows = [r for r in rows if r["setting"] != name]
        rows += [dict(model=args.model, setting=name, layers=layers, bias=bias, pooling=pooling, **r) for r in scored]
        timings[name] = cost
        if name == shipped and auto.kind != "none":
            cal = cache.encode(embedder, calibration, "document")[0]
            probe_texts = next(s for s in samples if s.family == "sts").texts["pairs"][0]
            probe = cache.encode(embedder, probe_texts, "document")[0]
            done["shipped_fit_min_cosine"] = check_shipped_fit(base, auto, cal, probe)
            print(f"shipped point: refit vs shipped statistics, min cosine {done['shipped_fit_min_cosine']}")
        first = next(iter(specs))
        line = "  ".join(f"{r['family']}/{r['sample']} {r['score']:.4f}" for r in scored if r["post"] == first)
        print(f"[{i + 1}/{len(points)}] {name} ({cost['seconds']} s, {cost['tokens_computed']} tokens): {line}",
              flush=True)  # fmt: skip
        if args.json:
            done.update(args=vars(args) | {"json": str(args.json)}, shipped=shipped, auto=str(auto))
            done.update(rows=rows, timings=timings)
            tmp = args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(done, indent=1))
            tmp.replace(args.json)
    source.close()
    summary = report(rows, shipped, args.top)
    if args.json:
        done.update(args=vars(args) | {"json": str(args.json)}, shipped=shipped, auto=str(auto), rows=rows)
        done.update(timings=timings, summary=summary)
        args.json.write_text(json.dumps(done, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
