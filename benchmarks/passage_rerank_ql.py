r"""Passage retrieval on QMSum: re-rank the shipped hybrid by query likelihood under the same frozen model.

    python benchmarks/passage_rerank_ql.py --samples A,B,C,D --documents 4 --dtype bfloat16 \
        --json docs/results/passage_rerank_ql_dev.json

Query likelihood (UPR, Sachan et al. 2022; training-free): a (question, passage) pair scores the mean
log-probability of the question's tokens after ``Passage: {passage}\nPlease write a question based on this
passage.\nQuestion:`` under the embedder's own causal LM (Gemma-3's head is its tied input embedding). Each
passage's prefix runs once; the questions are then scored in batches against a copy of its key/value cache, so a
sample costs one forward over its passages plus a few tokens per pair. The matrix is cached beside the vectors.

Per sample, on the same 2,048-token passages (whole turns, no overlap) and questions: BM25 (the reference row),
all-MiniLM-L6-v2, dense kv (``whiten:0.6`` as shipped), the shipped hybrid (BM25 ``weighted:0.5``), query
likelihood alone, the hybrid's top 5 / 10 re-ordered by it, and weighted fusions of the hybrid with it (its share
0.3 / 0.5 / 0.7) over every passage and, as the product does it, within the hybrid's top 10 / 20 / 30 (share
0.7) -- each hybrid also with re-routing off (``layers=[]``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from passage_postprocess import ScoreRows, parse_windows, passage_parser, passage_setup

QL_PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"
RERANK_DEPTHS = (5, 10)
QL_SHARES = (0.3, 0.5, 0.7)
PRODUCT_DEPTHS = (10, 20, 30)  # the product scores only the hybrid's top N
PRODUCT_SHARE = 0.7  # chosen on A-D at --documents 4 (pre-registered rule R3)


def load_causal_lm(embedder: Any, dtype: str) -> Any:
    """The embedder's checkpoint as a causal LM (stock sdpa attention; the head tied to the input embedding)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        embedder.model.name_or_path, dtype=getattr(torch, dtype), attn_implementation="sdpa"
    )
    return model.eval()


def question_likelihoods(
    model: Any, tokenizer: Any, passages: list[str], questions: list[str], batch: int = 8
) -> np.ndarray:
    """``(questions, passages)`` mean log-probability of each question's tokens after each passage's prompt."""
    import inspect

    import torch
    from tqdm.auto import tqdm

    # transformers renamed past_key_values to cache (5.2x); the lowest version allowed here (5.0) has the old name
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    encoded = [tokenizer(" " + q.strip(), add_special_tokens=False)["input_ids"] for q in questions]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.zeros((len(questions), len(passages)), np.float32)
    with torch.inference_mode():
        for column, passage in enumerate(tqdm(passages, desc="query likelihood", leave=False)):
            prefix = tokenizer(QL_PROMPT.format(passage=passage.strip()), return_tensors="pt")["input_ids"]
            first = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
            cache = getattr(first, "cache", None) or first.past_key_values
            last = torch.log_softmax(first.logits[0, -1].float(), -1)  # (V,) predicts each question's first token
            for start in range(0, len(questions), batch):
                group = encoded[start : start + batch]
                width = max(len(ids) for ids in group)
                ids = torch.full((len(group), width), pad, dtype=torch.long)  # (B, Lq), right-padded
                mask = torch.zeros((len(group), width), dtype=torch.long)
                for row, tokens in enumerate(group):
                    ids[row, : len(tokens)] = torch.tensor(tokens)
                    mask[row, : len(tokens)] = 1
                copied = copy.deepcopy(cache)
                copied.batch_repeat_interleave(len(group))
                full_mask = torch.cat([torch.ones((len(group), prefix.shape[1]), dtype=torch.long), mask], 1)
                logits = model(input_ids=ids, attention_mask=full_mask, use_cache=True, **{cache_name: copied}).logits
                logp = torch.log_softmax(logits.float(), -1)  # (B, Lq, V): position j predicts token j + 1
                for row, tokens in enumerate(group):
                    n = len(tokens)
                    target = torch.tensor(tokens)
                    total = last[target[0]] + logp[row, torch.arange(n - 1), target[1:]].sum()
                    out[start + row, column] = float(total) / n
    return out


def cached_likelihoods(model: Any, tokenizer: Any, passages: list[str], questions: list[str], tag: str) -> np.ndarray:
    """:func:`question_likelihoods`, kept under ``$KVEMBED_CACHE/ql`` keyed by every input (a rerun reads it)."""
    root = os.environ.get("KVEMBED_CACHE")
    if not root:
        return question_likelihoods(model, tokenizer, passages, questions)
    key = hashlib.sha256(json.dumps([tag, QL_PROMPT, passages, questions]).encode()).hexdigest()[:20]
    path = Path(root) / "ql" / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    scores = question_likelihoods(model, tokenizer, passages, questions)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, scores)
    return scores


def reranked(hybrid: np.ndarray, likelihood: np.ndarray, depth: int) -> np.ndarray:
    """The hybrid's top ``depth`` per row re-ordered by ``likelihood``, every other passage after them, in order."""
    out = hybrid.astype(np.float64).copy()
    for row in range(hybrid.shape[0]):
        top = np.argsort(-hybrid[row], kind="stable")[:depth]
        out[row, top] = 1e6 + likelihood[row, top]  # likelihoods are > -1e3, so the top block stays first
    return out


def fused_within(hybrid: np.ndarray, likelihood: np.ndarray, depth: int, share: float) -> np.ndarray:
    """The product's form: the hybrid's top ``depth`` re-ordered by a weighted fusion of the hybrid's score and the
    likelihood (each min-max normalised within those ``depth``; the likelihood's share ``share``), the rest after."""
    from kvembed_rag.retrieval.lexical import fuse

    out = hybrid.astype(np.float64).copy()
    for row in range(hybrid.shape[0]):
        top = np.argsort(-hybrid[row], kind="stable")[:depth]
        out[row, top] = 1e6 + fuse(hybrid[row, top], likelihood[row, top], fusion="weighted", weight=share)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = passage_parser(__doc__)
    parser.set_defaults(size=2048, windows="8,9;off", dtype="bfloat16")
    parser.add_argument("--max-length", type=int, default=2240, help="the embedder's (2,240 keeps 2,048 whole)")
    parser.add_argument("--anchor", default="all-MiniLM-L6-v2", help="sentence-transformers model ('' for none)")
    args = parser.parse_args(argv)
    setup = passage_setup(args, args.max_length)
    if setup is None:
        return 0
    from kvembed_rag.eval.passages import AnchorEncoder, bm25_scores, hybrid_scores, prepare
    from kvembed_rag.postprocess import apply, fit, parse_spec
    from kvembed_rag.retrieval.lexical import HybridConfig

    base, cache_, calibration, task = setup.base, setup.cache, setup.calibration, setup.task
    anchor = AnchorEncoder(args.anchor) if args.anchor else None
    lm = load_causal_lm(base, args.dtype)
    rows = ScoreRows(size=args.size, documents=args.documents, dtype=args.dtype, ql_prompt=QL_PROMPT)
    add = rows.add
    shipped = HybridConfig.parse("weighted:0.5+feedback:0+document:0")  # the plain fusion

    def fusion_of(share: float) -> Any:
        return HybridConfig.parse(f"weighted:{share}+feedback:0+document:0")

    for sample in (s.strip() for s in args.samples.split(",") if s.strip()):
        run = prepare(task.sample(args.documents, sample), base.token_offsets, size=args.size)
        passages = [p.text for p in run.passages]
        questions = [q.text for q in run.queries]
        lexical = bm25_scores(run.passages, run.queries)
        add(sample, "bm25", lexical, run)
        if anchor is not None:
            add(sample, anchor.name, anchor.encode(questions, "query") @ anchor.encode(passages, "document").T, run)
        tag = f"{args.model}|{args.dtype}"
        likelihood = cached_likelihoods(lm, base.tokenizer, passages, questions, tag)
        add(sample, "ql", likelihood, run)
        # kv's share in the fused ranking: BM25 alone re-ranked the same way (no dense side at all)
        bm25_full = lexical.astype(np.float64)
        everywhere = hybrid_scores(bm25_full, likelihood, fusion_of(PRODUCT_SHARE))
        add(sample, f"bm25, ql fuse {PRODUCT_SHARE}", everywhere, run)
        for depth in PRODUCT_DEPTHS:
            fused = fused_within(bm25_full, likelihood, depth, PRODUCT_SHARE)
            add(sample, f"bm25, ql fuse {PRODUCT_SHARE} top {depth}", fused, run)
        for window in parse_windows(args.windows):
            embedder = base.variant(layers=window)
            label = "kv " + (",".join(map(str, window)) or "off")
            stats = fit(cache_.encode(embedder, calibration, "document")[0], parse_spec("whiten:0.6"))
            docs = cache_.encode(embedder, passages, "document")[0]
            queries = cache_.encode(embedder, questions, "query")[0]
            dense = apply(queries, stats) @ apply(docs, stats).T
            add(sample, f"{label} dense", dense, run)
            hybrid = hybrid_scores(dense, lexical, shipped)
            add(sample, f"{label} + bm25 w0.5", hybrid, run)
            finite = np.where(np.isfinite(hybrid), hybrid, np.nan)
            floor = np.nanmin(finite, axis=1, keepdims=True) - 1.0  # outside the hybrid's top 100: below it
            hybrid_full = np.where(np.isfinite(hybrid), hybrid, floor)
            for depth in RERANK_DEPTHS:
                add(sample, f"{label} + bm25 w0.5, ql rerank {depth}", reranked(hybrid_full, likelihood, depth), run)
            for share in QL_SHARES:
                fused = hybrid_scores(hybrid_full, likelihood, fusion_of(share))
                add(sample, f"{label} + bm25 w0.5, ql fuse {share}", fused, run)
            for depth in PRODUCT_DEPTHS:
                fused = fused_within(hybrid_full, likelihood, depth, PRODUCT_SHARE)
                add(sample, f"{label} + bm25 w0.5, ql fuse {PRODUCT_SHARE} top {depth}", fused, run)
        rows.write(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
