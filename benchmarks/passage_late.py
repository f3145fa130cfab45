r"""Late chunking with re-routing: one forward pass over a window of consecutive passages, a vector per passage.

    python benchmarks/passage_late.py --samples A --windows "8,9;off" --json docs/results/passage_late_A.json

Late chunking (Günther et al., 2024) embeds a long stretch of a document at once and pools each passage from its
own tokens' final states, so every passage is read in its document's context. Here the stretch is as many
consecutive ``eval passages`` passages (``--size`` tokens, whole turns) of one meeting as fit ``--window``
tokens, in kv's document prompt, with the re-routing of the window (the last token's K/V is the prompt's
compression of the whole stretch). Each passage's vector is

- ``mean``: the mean of its own tokens' final states, or
- ``hybrid``: that mean and the stretch's last-token state averaged (kv's pooling; the last token is shared by
  every passage of the stretch),

post-processed by the shipped whitening (``whiten:0.6`` fitted on the calibration texts) or with each role
centred on its own mean (documents: the corpus's late-chunk vectors; queries: the calibration texts embedded as
queries), the fix of the corpus-fit trap. Queries are embedded alone as always. Rows are scored on the same
passages and questions as ``passage_hybrid.py`` (BM25, passages embedded alone, the shipped hybrid), alone and
fused with BM25 (weighted 0.5). Late vectors are cached under the eval cache (``late/``).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from passage_hybrid import bm25_matrix
from passage_postprocess import ScoreRows, centred, parse_windows, passage_parser, passage_setup


def stretches(passages: list[Any], tokens: dict[str, int], budget: int) -> list[list[int]]:
    """Consecutive passages of one document packed into stretches of at most ``budget`` tokens."""
    out: list[list[int]] = []
    used = 0
    for i, passage in enumerate(passages):
        n = tokens[passage.id]
        if out and passages[out[-1][-1]].document == passage.document and used + n <= budget:
            out[-1].append(i)
            used += n
        else:
            out.append([i])
            used = n
    return out


def late_vectors(embedder: Any, documents: dict[str, Any], passages: list[Any], groups: list[list[int]]) -> dict:
    """``{"mean": (n, H), "hybrid": (n, H)}`` unit rows, one forward pass per stretch."""
    import torch

    from kvembed_rag.attention import PLAN_KWARG, build_plan

    forward = embedder.forward
    template = forward.resolved.prompts
    out = {k: np.zeros((len(passages), forward.hidden_size), np.float32) for k in ("mean", "hybrid")}
    for number, group in enumerate(groups):
        first, last = passages[group[0]], passages[group[-1]]
        text = documents[first.document].text[first.start : last.end]
        rendered, spans = template.render(text, "document")
        encoding = forward.tokenizer(rendered, add_special_tokens=True, return_offsets_mapping=True)
        ids = torch.tensor([encoding["input_ids"]])  # (1, T)
        offsets = encoding["offset_mapping"]
        mask = torch.ones_like(ids)
        plan = build_plan(mask, layers=forward.resolved.layers, bias=forward.resolved.bias)
        with forward.lock, torch.inference_mode():
            hidden = (
                forward.model(
                    input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1), **{PLAN_KWARG: plan}
                )
                .last_hidden_state[0]
                .float()
            )  # (T, H)
        final = hidden[-1]  # (H,) the stretch's last token, after re-routing
        for i in group:
            a = spans[0][0] + passages[i].start - first.start
            b = spans[0][0] + passages[i].end - first.start
            own = [t for t, (s, e) in enumerate(offsets) if e > s and a <= s < b]
            mean = hidden[own].mean(0) if own else final
            for name, vector in (("mean", mean), ("hybrid", (mean + final) / 2)):
                out[name][i] = torch.nn.functional.normalize(vector, dim=0).numpy()
        print(f"  stretch {number + 1}/{len(groups)}: {len(group)} passages, {ids.shape[1]} tokens", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = passage_parser(__doc__)
    parser.add_argument("--window", type=int, default=4096, help="tokens per forward pass (prompt included)")
    args = parser.parse_args(argv)
    setup = passage_setup(args, 512)
    if setup is None:
        return 0
    from kvembed_rag._io import cache_root
    from kvembed_rag.eval.passages import hybrid_scores, prepare
    from kvembed_rag.postprocess import apply, fit, parse_spec
    from kvembed_rag.retrieval.lexical import HybridConfig

    base, cache_, calibration, task = setup.base, setup.cache, setup.calibration, setup.task
    long_base = base.variant(max_length=args.window)
    fusion = HybridConfig.parse("weighted:0.5+feedback:0+document:0")  # the plain fusion
    spec = parse_spec("whiten:0.6")
    rows = ScoreRows(size=args.size)
    add = rows.add

    for sample in (s.strip() for s in args.samples.split(",") if s.strip()):
        subset = task.sample(args.documents, sample)
        run = prepare(subset, base.token_offsets, size=args.size)
        passages = [p.text for p in run.passages]
        questions = [q.text for q in run.queries]
        lexical = bm25_matrix(passages, questions, False)
        add(sample, "bm25", lexical, run)
        budget = args.window - 64  # the prompt and the tokens a stretch's joins may add
        groups = stretches(run.passages, run.tokens, budget)
        for window in parse_windows(args.windows):
            label = "kv " + (",".join(map(str, window)) or "off")
            embedder = base.variant(layers=window)
            cal_doc = cache_.encode(embedder, calibration, "document")[0]
            cal_query = cache_.encode(embedder, calibration, "query")[0]
            stats = fit(cal_doc, spec)
            queries = cache_.encode(embedder, questions, "query")[0]
            alone = cache_.encode(embedder, passages, "document")[0]
            dense = apply(queries, stats) @ apply(alone, stats).T
            add(sample, f"{label} alone", dense, run)
            add(sample, f"{label} alone + bm25 weighted:0.5", hybrid_scores(dense, lexical, fusion), run)
            key = hashlib.sha256(json.dumps([long_base.variant(layers=window).fingerprint, passages]).encode())
            path = cache_root() / "eval" / "late" / f"{key.hexdigest()[:24]}.npz"
            if path.is_file():
                late = dict(np.load(path))
            else:
                late = late_vectors(long_base.variant(layers=window), subset.documents, run.passages, groups)
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, **late)
            per_role_stats = fit(centred(cal_doc, cal_doc.mean(0)), spec)
            for pooling, docs in late.items():
                for post, (q, d) in {
                    "whiten:0.6": (apply(queries, stats), apply(docs, stats)),
                    "per-role mean": (
                        apply(centred(queries, cal_query.mean(0)), per_role_stats),
                        apply(centred(docs, docs.mean(0)), per_role_stats),
                    ),
                }.items():
                    scores = q @ d.T
                    add(sample, f"{label} late {pooling} {post}", scores, run)
                    add(
                        sample,
                        f"{label} late {pooling} {post} + bm25 weighted:0.5",
                        hybrid_scores(scores, lexical, fusion),
                        run,
                    )
        rows.write(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
