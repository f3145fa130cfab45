"""Where bfloat16 batch variance comes from, and what the cheap reductions buy and cost (issue 31).

python benchmarks/bf16_variance.py tiny [--dtypes float32,bfloat16] [--json out.json]
python benchmarks/bf16_variance.py real [--model default] [--threads 1] [--json out.json]

``tiny``: the invariance checks of tests/test_invariance.py on the tiny random checkpoints of
tests/tiny_models.py, in each dtype, reporting the worst |difference| of each check (the tests' per-dtype
tolerances come from this table, with a margin).

``real``: the default model in bfloat16. A short text embedded alone and beside longer texts (the batch pads
it), then, one op kind at a time with everything else held equal:

* **Linear by batch size**: each Linear of one layer applied to the short text's input alone ``(1, T, H)``
  and inside the padded batch ``(B, W, H)``;
* **attention over padded widths**: the stock SDPA kernel and the merged-slot path on the same q/k/v, alone
  and left-padded to the batch width (with the padding mask);
* **layer by layer**: the short text's hidden states after each decoder layer, alone vs batched;
* **pooling and post-processing**: the raw pooled vector's difference, and the shipped post-processing's
  amplification of it (post-processing already runs in float64 on float32 pooled vectors).

Then the reductions, each as max |delta| batched vs alone and tokens/s relative to the plain bf16 embedder
(one process): the final norm's output kept in float32, attention computed in float32, and every text
embedded alone (``batch_tokens=1``, the batch-invariant path).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kvembed_rag import KVEmbedder, attention

TESTS = Path(__file__).resolve().parents[1] / "tests"

SHORT = "Key and value states of the final token are re-routed as a prefix."
LONG = [  # ~120 and ~60 tokens: enough padding for the short text, small enough for emulated bf16 on 2 cores
    "The quick brown fox jumps over the lazy dog. " * 10,
    "Retrieval-augmented generation needs good embeddings of long documents, meeting transcripts and essays. " * 3,
]


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# ------------------------------------------------------------------------------------------------ tiny models
def tiny_table(dtypes: list[str]) -> list[dict[str, Any]]:
    """Worst |delta| of each invariance check per architecture and dtype on the tiny checkpoints."""
    sys.path.insert(0, str(TESTS))
    from test_invariance import TEXTS
    from tiny_models import ARCHITECTURES, build_checkpoint

    from kvembed_rag.methods import METHODS

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as root:
        for arch in ARCHITECTURES:
            path = str(build_checkpoint(arch, Path(root) / arch))
            for dtype in dtypes:

                def make(dtype: str = dtype, path: str = path, **kw: Any) -> KVEmbedder:
                    return KVEmbedder.from_pretrained(path, dtype=dtype, **kw)

                row: dict[str, Any] = {"arch": arch, "dtype": dtype}
                worst = 0.0
                for method in METHODS:
                    for side in ("left", "right"):
                        e = make(method=method, padding_side=side)
                        worst = max(worst, max_diff(e.encode(TEXTS), np.stack([e.encode(t) for t in TEXTS])))
                row["batched_vs_alone"] = worst
                e = make()
                row["batch_budget"] = max_diff(e.encode(TEXTS, batch_tokens=1), e.encode(TEXTS, batch_tokens=10**6))
                off, muted = make(method="kv", layers=[]), make(method="kv", bias=-1e4)
                row["muted_vs_off"] = max_diff(muted.encode(TEXTS), off.encode(TEXTS))
                sdpa, eager = make(attn_implementation="sdpa"), make(attn_implementation="eager")
                row["sdpa_vs_eager"] = max_diff(sdpa.encode(TEXTS), eager.encode(TEXTS))
                print(
                    f"{arch:8s} {dtype:9s} " + " ".join(f"{k}={v:.2e}" for k, v in row.items() if isinstance(v, float)),
                    flush=True,
                )
                rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ real model
def _decoder(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.layers  # type: ignore[return-value]  # Gemma3TextModel / LlamaModel keep them here


@contextlib.contextmanager
def capture_layers(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Each decoder layer's output hidden states, in call order."""
    seen: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, _a: Any, out: Any) -> None:
        seen.append((out[0] if isinstance(out, tuple) else out).detach().float().clone())

    handles = [layer.register_forward_hook(hook) for layer in _decoder(model)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def short_rows(embedder: KVEmbedder, texts: list[str]) -> tuple[list[Any], int]:
    """The encoded batch (the order encode uses: longest first) and the short text's row in it."""
    encoded = embedder.tokenize(texts)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
    return [encoded[i] for i in order], order.index(texts.index(SHORT))


def layer_by_layer(embedder: KVEmbedder) -> list[float]:
    """max |delta| of the short text's real-token hidden states after each layer, alone vs in the batch."""
    batch, row = short_rows(embedder, [SHORT, *LONG])
    alone_items = [batch[row]]
    with capture_layers(embedder.model) as alone:
        embedder.embed_encoded(alone_items)
    with capture_layers(embedder.model) as batched:
        embedder.embed_encoded(batch)
    n = len(alone_items[0].ids)
    left = embedder.padding_side == "left"
    out = []
    for a, b in zip(alone, batched, strict=True):
        b_row = b[row, -n:] if left else b[row, :n]
        out.append(float((a[0] - b_row).abs().max()))
    return out


def linear_by_batch(embedder: KVEmbedder, layer: int = 0) -> dict[str, float]:
    """Each Linear of one layer on the short text's real input: alone ``(1, T, in)`` vs inside ``(B, W, in)``."""
    batch, row = short_rows(embedder, [SHORT, *LONG])
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in _decoder(embedder.model)[layer].named_modules():
        if isinstance(module, torch.nn.Linear):

            def hook(_m: torch.nn.Module, args: Any, name: str = name) -> None:
                inputs.setdefault(name, args[0].detach().clone())

            handles.append(module.register_forward_pre_hook(hook))
    try:
        embedder.embed_encoded([batch[row]])
    finally:
        for h in handles:
            h.remove()
    out: dict[str, float] = {}
    width = max(len(e.ids) for e in batch)
    generator = torch.Generator().manual_seed(0)
    for name, x in inputs.items():
        module = _decoder(embedder.model)[layer].get_submodule(name)
        n = x.shape[1]
        scale = float(x.float().std())
        padded = (torch.randn((len(batch), width, x.shape[-1]), generator=generator) * scale).to(x.dtype)
        padded[row, -n:] = x[0]
        with torch.inference_mode():
            alone = module(x)[0]
            inside = module(padded)[row, -n:]
            flat = module(padded.reshape(-1, x.shape[-1])).reshape(len(batch), width, -1)[row, -n:]
        out[name] = max(float((alone - inside).abs().max()), float((alone - flat).abs().max()))
    return out


def attention_over_padding(dtype: torch.dtype, seeds: int = 8) -> dict[str, float]:
    """Worst |delta| and the share of output elements that differ, over ``seeds`` random problems
    (:func:`attention_once`): one flipped bf16 rounding is data-dependent, so one seed may show none."""
    worst: dict[str, float] = {}
    for seed in range(seeds):
        for name, (delta, share) in attention_once(dtype, seed).items():
            worst[name] = max(worst.get(name, 0.0), delta)
            worst[f"{name}, share of elements differing"] = max(
                worst.get(f"{name}, share of elements differing", 0.0), share
            )
    return worst


def attention_once(dtype: torch.dtype, seed: int, length: int = 25, width: int = 130) -> dict[str, tuple[float, float]]:
    """Gemma-3-270M's attention shape (4 query heads, 1 KV head, 256 dims): the same q/k/v alone (no mask, as
    transformers calls an unpadded row) and left-padded to ``width`` keys with the boolean padding mask (as in a
    batch beside a longer text); transformers' stock SDPA call and the merged slot."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    generator = torch.Generator().manual_seed(seed)
    heads, kv_heads, dim = 4, 1, 256
    q = torch.randn(1, heads, length, dim, generator=generator).to(dtype)
    k = torch.randn(1, kv_heads, length, dim, generator=generator).to(dtype)
    v = torch.randn(1, kv_heads, length, dim, generator=generator).to(dtype)
    pad = width - length

    def padded(t: torch.Tensor) -> torch.Tensor:
        filler = torch.randn((*t.shape[:2], pad, dim), generator=generator).to(dtype)
        return torch.cat([filler, t], dim=2)

    mask2d = torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(length, dtype=torch.long)])[None]
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    allowed = causal[None, None] & mask2d.bool()[:, None, None, :]  # (1, 1, W, W)
    module: Any = SimpleNamespace(
        layer_idx=0, num_key_value_groups=heads // kv_heads, head_dim=dim, is_causal=True, training=False
    )
    out: dict[str, tuple[float, float]] = {}
    qp, kp, vp = padded(q), padded(k), padded(v)

    def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        delta = (a.float() - b.float()).abs()
        return float(delta.max()), float((delta > 0).float().mean())

    with torch.inference_mode():
        alone, _ = sdpa_attention_forward(module, q, k, v, None, scaling=dim**-0.5)
        inside, _ = sdpa_attention_forward(module, qp, kp, vp, allowed, scaling=dim**-0.5)
        out["sdpa (stock kernel)"] = compare(alone, inside[:, pad:])
        plan_alone = attention.build_plan(torch.ones((1, length), dtype=torch.long), layers=[0], bias=1.0)
        plan_pad = attention.build_plan(mask2d, layers=[0], bias=1.0)
        merged_alone = attention._rerouted_by_lse_merge(module, q, k, v, None, plan_alone, None, {})
        merged_pad = attention._rerouted_by_lse_merge(module, qp, kp, vp, allowed, plan_pad, None, {})
        assert merged_alone is not None and merged_pad is not None
        out["merged slot"] = compare(merged_alone, merged_pad[:, pad:])
    return out


@contextlib.contextmanager
def float32_final_norm(model: torch.nn.Module) -> Iterator[None]:
    """Reduction: the final norm returns float32 (its float32 result is not rounded to bf16 before pooling)."""
    norm = model.norm
    original = norm.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            weight = norm.weight.float()
            x32 = x.float()
            eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6))
            y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
            # Gemma's RMSNorm scales by (1 + w); Llama-style ones by w
            return y * (1.0 + weight) if type(norm).__name__.startswith("Gemma") else y * weight

    norm.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        norm.forward = original  # type: ignore[method-assign]


@contextlib.contextmanager
def float32_attention() -> Iterator[None]:
    """Reduction: q/k/v cast to float32 for every attention call, the output cast back."""
    from transformers import AttentionInterface

    original = AttentionInterface._global_mapping[attention.ATTN_SDPA]

    def wrapped(module: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, *a: Any, **kw: Any) -> Any:
        out, weights = original(module, q.float(), k.float(), v.float(), mask, *a, **kw)
        return out.to(q.dtype), weights

    AttentionInterface._global_mapping[attention.ATTN_SDPA] = wrapped
    try:
        yield
    finally:
        AttentionInterface._global_mapping[attention.ATTN_SDPA] = original


def reductions(embedder: KVEmbedder) -> list[dict[str, Any]]:
    """max |delta| batched vs alone (final vectors) and the batched call's tokens/s against the shipped bf16
    embedder's (one process; each timed once: emulated bf16 on a shared 2-core machine is slow). Embedding
    every text alone (``batch_tokens=1``) is batch-invariant by construction: its cost is the alone time."""
    texts = [SHORT, *LONG]
    tokens = sum(len(e.ids) for e in embedder.tokenize(texts))
    reference = KVEmbedder.from_pretrained(embedder.source.spec, dtype="float32").encode(texts)
    variants: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
        "bf16 as shipped": contextlib.nullcontext,
        "final norm in float32": lambda: float32_final_norm(embedder.model),
        "attention in float32": float32_attention,
    }
    rows = []
    base_seconds = None
    for name, context in variants.items():
        with context():
            start = time.perf_counter()
            batched = embedder.encode(texts)
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            alone = np.stack([embedder.encode(t) for t in texts])
            alone_seconds = time.perf_counter() - start
        base_seconds = base_seconds or seconds
        row = {
            "variant": name,
            "max_delta_batched_vs_alone": max_diff(batched, alone),
            "max_delta_vs_float32": max_diff(batched, reference),
            "tokens_per_s": tokens / seconds,
            "speed_vs_shipped": base_seconds / seconds,
            "alone_tokens_per_s": tokens / alone_seconds,
            "alone_speed_vs_shipped": base_seconds / alone_seconds,
        }
        print(
            f"{name:24s} batched-alone {row['max_delta_batched_vs_alone']:.2e}  vs float32 "
            f"{row['max_delta_vs_float32']:.2e}  batched {row['tokens_per_s']:6.0f} tok/s"
            f" x{row['speed_vs_shipped']:.3f}"
            f"  one text at a time {row['alone_tokens_per_s']:6.0f} tok/s x{row['alone_speed_vs_shipped']:.3f}",
            flush=True,
        )
        rows.append(row)
    return rows


def real_report(model: str) -> dict[str, Any]:
    report: dict[str, Any] = {"model": model, "threads": torch.get_num_threads()}
    bf16 = KVEmbedder.from_pretrained(model, dtype="bfloat16")
    raw = bf16.raw()
    texts = [SHORT, *LONG]
    print(f"{bf16.source.spec}: {bf16.describe()['dtype']}, postprocess {bf16.config.postprocess}", flush=True)
    raw_batched, raw_alone = raw.encode(texts)[0], raw.encode(SHORT)
    # post-processing is a function of the raw vector (float64, row by row): apply it rather than re-embed
    shipped = bf16.apply_postprocess(np.stack([raw_batched, raw_alone]))
    for name, (batched, alone) in (
        ("raw (no post-processing)", (raw_batched, raw_alone)),
        ("shipped post-processing", (shipped[0], shipped[1])),
    ):
        cosine = float(batched @ alone / (np.linalg.norm(batched) * np.linalg.norm(alone)))
        report[f"short text, {name}"] = {"max_delta": max_diff(batched, alone), "cosine": cosine}
        print(f"short text batched vs alone, {name}: max|d| {max_diff(batched, alone):.2e}, cosine {cosine:.6f}")
    amplification = report["short text, shipped post-processing"]["max_delta"] / max(
        report["short text, raw (no post-processing)"]["max_delta"], 1e-12
    )
    report["post-processing amplification"] = amplification
    print(f"post-processing amplifies the raw difference {amplification:.1f}x")
    report["layers"] = layer_by_layer(raw)
    print("hidden states after each layer, max|d| alone vs batched:")
    print("  " + " ".join(f"{i}:{d:.2g}" for i, d in enumerate(report["layers"])))
    report["linear_layer0"] = linear_by_batch(raw)
    print("Linear of layer 0 alone vs inside the padded batch, max|d|:")
    print("  " + ", ".join(f"{k} {v:.2g}" for k, v in report["linear_layer0"].items()))
    for dtype in (torch.float32, torch.bfloat16):
        found = attention_over_padding(dtype)
        report[f"attention_{dtype}"] = found
        print(f"attention alone vs left-padded ({dtype}): " + ", ".join(f"{k} {v:.2g}" for k, v in found.items()))
    report["reductions"] = reductions(bf16)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["tiny", "real"])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part == "tiny":
        payload: Any = tiny_table([d.strip() for d in args.dtypes.split(",") if d.strip()])
    else:
        payload = real_report(args.model)
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
