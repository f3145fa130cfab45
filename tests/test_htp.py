"""HTP (hierarchical token prepending): the input layout, the copies at the prepending layers, the budget."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from kvembed_rag.attention import PLAN_KWARG, build_plan
from kvembed_rag.errors import TruncationWarning
from kvembed_rag.tokenization import EncodedText, hierarchical_markers, sentence_end_token


def test_markers_before_each_sentence_and_a_front_block():
    # <bos> | t10 t11 | t12 t13 t14 | <suffix 99>: two sentences, the first ending at t11
    item = EncodedText([1, 10, 11, 12, 13, 14, 99], 1, 7, 1, text_end=6)
    out = hierarchical_markers(item, [False, True, False, False, False], marker=0)
    assert out.ids == [1, 0, 0, 0, 10, 11, 0, 12, 13, 14, 99]
    # sentence 1's placeholders (3 and front 1) get its last token (5); sentence 2's (6 and front 2) the token
    # after the text (10), as HTP's "</s>"
    assert sorted(out.copies) == [(1, 5), (2, 10), (3, 5), (6, 10)]
    assert (out.text_start, out.text_end) == (1, 10)
    assert (out.pool_start, out.pool_end, out.pool_skip) == (3, 10, [3, 6])  # the text's own tokens only


def test_no_suffix_the_last_sentence_is_its_own_last_token():
    item = EncodedText([1, 10, 11], 1, 3, 1, text_end=3)
    out = hierarchical_markers(item, [False, False], marker=0)
    assert out.ids == [1, 0, 0, 10, 11] and sorted(out.copies) == [(1, 4), (2, 4)]


def test_an_empty_text_is_left_alone():
    item = EncodedText([1, 99], 0, 2, 1, text_end=1)
    assert hierarchical_markers(item, [], marker=0) is item


@pytest.mark.parametrize(
    ("token", "ends"), [("\u2581end.", True), ("!", True), ("\n", True), ("\u010a", True), ("\u2581word", False)]
)
def test_sentence_end_tokens(token, ends):
    assert sentence_end_token(token) is ends


def test_placeholders_hold_their_sources_at_the_prepending_layers(make_embedder):
    embedder = make_embedder(method="htp")
    forward = embedder.forward
    assert forward.token_prepending_layers and embedder.describe()["pooling"] == "mean"
    batch = forward.tokenize(["First sentence here. Second one follows! And a third", "short"], "document")
    assert len(batch[0].copies) >= 2 * 2  # at least two sentences, two placeholders each
    ids, mask, _ = forward.collate(batch)
    layer = forward.token_prepending_layers[-1]
    seen: list[torch.Tensor] = []
    with torch.inference_mode(), forward._token_prepending(batch, mask):
        # registered after the embedder's hook on the same layer, so it sees the overwritten input
        handle = forward._decoder[layer].register_forward_pre_hook(
            lambda module, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).clone()),
            with_kwargs=True,
        )
        try:
            forward.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                **{PLAN_KWARG: build_plan(mask, layers=(), bias=0.0)},
            )
        finally:
            handle.remove()
    hidden = seen[0]  # (B, T, H)
    width = ids.shape[1]
    for row, item in enumerate(batch):
        offset = width - len(item.ids) if forward.resolved.padding_side == "left" else 0
        for target, source in item.copies:
            torch.testing.assert_close(hidden[row, offset + target], hidden[row, offset + source])


def test_markers_count_in_max_length(make_embedder):
    embedder = make_embedder(method="htp", max_length=48)
    text = "A sentence. " * 40
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        (item,) = embedder.forward.tokenize([text])
        vector = embedder.encode(text)
    assert len(item.ids) <= 48 and item.truncated_by > 0
    assert len(item.pool_skip) * 2 == len(item.copies) and len(item.pool_skip) >= 2
    assert np.isfinite(vector).all()


def test_htp_differs_from_plain_mean_and_from_token_prepending(make_embedder):
    text = "The budget was approved. The remote has a scroll wheel. Everyone agreed."
    htp = make_embedder(method="htp").encode(text)
    assert not np.allclose(htp, make_embedder(method="mean").encode(text), atol=1e-4)
    assert not np.allclose(htp, make_embedder(method="token-prepending").encode(text), atol=1e-4)
