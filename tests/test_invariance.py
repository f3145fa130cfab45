"""Invariance tests on tiny random checkpoints of four architectures (no golden numbers), in float32 and in
bfloat16 (what ``dtype="auto"`` gives on CPUs with native bf16 and on CUDA; emulated, and still fast, elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dtype_tolerances import (
    DTYPES,
    HIDDEN_TOLERANCE,
    KERNEL_TOLERANCE,
    MUTED_TOLERANCE,
    VECTOR_TOLERANCE,
)
from dtype_tolerances import dtype_option as _dtype
from tiny_models import ARCHITECTURES
from transformers import AutoModel

from kvembed_rag.attention import ATTN_EAGER, ATTN_SDPA, PLAN_KWARG, build_plan
from kvembed_rag.methods import METHODS

TEXTS = [
    "fox",
    "The quick brown fox jumps over the lazy dog. " * 12,  # long: forces padding and crosses sliding windows
    "Retrieval needs embeddings.",
    "",
    "Key and value states of the final token are re-routed as a prefix. " * 3,
]


#: bfloat16 runs the methods whose forward pass or pooling differ (prompteol and last share mean's stock forward
#: and token-prepending's last-token pooling), to keep the fast suite fast; htp copies many positions per text
BF16_METHODS = ("kv", "mean", "echo", "bidirectional", "token-prepending", "htp")
METHOD_DTYPES = [(m, "float32") for m in METHODS] + [(m, "bfloat16") for m in METHODS if m in BF16_METHODS]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(("method", "dtype"), METHOD_DTYPES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batched_equals_alone(make_embedder, arch, method, side, dtype):
    embedder = make_embedder(arch, method=method, padding_side=side, **_dtype(dtype))
    assert str(embedder.dtype) == f"torch.{dtype}"
    batched = embedder.encode(TEXTS)
    alone = np.stack([embedder.encode(text) for text in TEXTS])
    assert batched.shape == (len(TEXTS), embedder.dim)
    assert batched.dtype == np.float32  # pooled and post-processed in float32/float64 whatever the backbone's dtype
    assert np.abs(batched - alone).max() <= VECTOR_TOLERANCE[dtype]
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batch_budget_does_not_change_vectors(make_embedder, arch, dtype):
    embedder = make_embedder(arch, **_dtype(dtype))
    one_by_one = embedder.encode(TEXTS, batch_tokens=1)
    all_at_once = embedder.encode(TEXTS, batch_tokens=1_000_000)
    assert np.abs(one_by_one - all_at_once).max() <= VECTOR_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_strongly_negative_bias_equals_no_rerouting(make_embedder, arch, dtype):
    off = make_embedder(arch, method="kv", layers=[], **_dtype(dtype))
    muted = make_embedder(arch, method="kv", bias=-1e4, **_dtype(dtype))
    on = make_embedder(arch, method="kv", bias=1.0, **_dtype(dtype))
    assert muted.layers and not off.layers
    # the slot's share sigmoid(-1e4 - lse) is exactly 0 in float32, and the lerp with weight 0 returns O unchanged
    assert np.abs(muted.encode(TEXTS) - off.encode(TEXTS)).max() <= MUTED_TOLERANCE[dtype]
    # and re-routing does something when it is on (same batches, so no bf16 batch noise in this difference)
    assert np.abs(on.encode(TEXTS) - off.encode(TEXTS)).max() > 1e-3


def _load(path, attn, dtype="float32"):
    return AutoModel.from_pretrained(str(path), attn_implementation=attn, dtype=getattr(torch, dtype)).eval()


def _batch(make_embedder, arch):
    embedder = make_embedder(arch, padding_side="left")
    encoded = embedder.tokenize(TEXTS)
    ids, mask, _ = embedder.collate(encoded)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, positions


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_no_selected_layers_equals_stock_sdpa_exactly(checkpoints, make_embedder, arch, dtype):
    ids, mask, positions = _batch(make_embedder, arch)
    ours, stock = _load(checkpoints[arch], ATTN_SDPA, dtype), _load(checkpoints[arch], "sdpa", dtype)
    plan = build_plan(mask, layers=[], bias=1.0)
    with torch.inference_mode():
        a = ours(input_ids=ids, attention_mask=mask, position_ids=positions, **{PLAN_KWARG: plan}).last_hidden_state
        b = stock(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        c = ours(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state  # no plan at all
    real = mask.bool()
    assert torch.equal(a[real], b[real])
    assert torch.equal(c[real], b[real])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sdpa_path_equals_eager_reference(checkpoints, make_embedder, arch, bidirectional, dtype):
    ids, mask, positions = _batch(make_embedder, arch)
    sdpa, eager = _load(checkpoints[arch], ATTN_SDPA, dtype), _load(checkpoints[arch], ATTN_EAGER, dtype)
    plan = build_plan(mask, layers=[1, 2], bias=1.0, bidirectional=bidirectional)
    with torch.inference_mode():
        a = sdpa(input_ids=ids, attention_mask=mask, position_ids=positions, **{PLAN_KWARG: plan}).last_hidden_state
        b = eager(input_ids=ids, attention_mask=mask, position_ids=positions, **{PLAN_KWARG: plan}).last_hidden_state
    real = mask.bool()
    assert (a[real].float() - b[real].float()).abs().max().item() <= HIDDEN_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lse_merge_path_equals_explicit_mask_path(checkpoints, make_embedder, arch, padded, dtype, monkeypatch):
    """The fast path (stock kernel + merged slot) is taken on CPU and equals the (B, 1, Q, K+1) mask path,
    with padding (fully masked query rows included) and without (transformers passes no mask at all)."""
    from kvembed_rag import attention

    ids, mask, positions = _batch(make_embedder, arch)
    if not padded:
        ids, mask, positions = ids[:, -4:], mask[:, -4:], positions[:, -4:] - positions[:, -4:-3]
        mask = torch.ones_like(mask)
    model = _load(checkpoints[arch], ATTN_SDPA, dtype)
    plan = build_plan(mask, layers=[1, 2], bias=1.5)
    calls = []
    real_kernel = attention._CPU_FLASH_WITH_LSE
    monkeypatch.setattr(attention, "_CPU_FLASH_WITH_LSE", lambda *a, **k: calls.append(1) or real_kernel(*a, **k))
    with torch.inference_mode():
        fast = model(input_ids=ids, attention_mask=mask, position_ids=positions, **{PLAN_KWARG: plan})
    assert len(calls) == 2  # both re-routed layers took the merge path
    monkeypatch.setattr(attention, "_CPU_FLASH_WITH_LSE", None)
    with torch.inference_mode():
        slow = model(input_ids=ids, attention_mask=mask, position_ids=positions, **{PLAN_KWARG: plan})
    real = mask.bool()
    assert torch.isfinite(fast.last_hidden_state).all()
    difference = fast.last_hidden_state[real].float() - slow.last_hidden_state[real].float()
    assert difference.abs().max().item() <= HIDDEN_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_embedder_sdpa_equals_eager(make_embedder, arch, dtype):
    sdpa = make_embedder(arch, attn_implementation="sdpa", **_dtype(dtype))
    eager = make_embedder(arch, attn_implementation="eager", **_dtype(dtype))
    assert np.abs(sdpa.encode(TEXTS) - eager.encode(TEXTS)).max() <= KERNEL_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_only_rerouted_layers_change_hidden_states(checkpoints, make_embedder, arch, dtype):
    ids, mask, positions = _batch(make_embedder, arch)
    model = _load(checkpoints[arch], ATTN_SDPA, dtype)
    n = model.config.num_hidden_layers
    with torch.inference_mode():
        base = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            output_hidden_states=True,
            **{PLAN_KWARG: build_plan(mask, layers=[], bias=1.0)},
        ).hidden_states
        for layer in (1, n - 2):
            routed = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                output_hidden_states=True,
                **{PLAN_KWARG: build_plan(mask, layers=[layer], bias=1.0)},
            ).hidden_states
            real = mask.bool()
            # hidden_states[i] is the input of layer i; hidden_states[i + 1] its output
            for i in range(layer + 1):
                assert torch.equal(routed[i][real], base[i][real]), f"layer {i - 1} changed before layer {layer}"
            assert (routed[layer + 1][real] - base[layer + 1][real]).abs().max().item() > 1e-4


def test_shared_mask_is_not_modified_in_place():
    from kvembed_rag.attention import kv_sdpa_attention_forward

    class Module(torch.nn.Module):
        layer_idx = 0
        num_key_value_groups = 2
        head_dim = 8

    q = torch.randn(2, 4, 5, 8)
    k, v = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mask = torch.tril(torch.ones(5, 5, dtype=torch.bool)).expand(2, 1, 5, 5).clone()
    mask[0, :, :, 0] = False  # row 0 left-padded by one
    before = mask.clone()
    plan = build_plan(torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]), layers=[0], bias=1.0)
    out, _ = kv_sdpa_attention_forward(Module(), q, k, v, mask, kv_plan=plan)
    assert out.shape == (2, 5, 4, 8)
    assert torch.equal(mask, before)
    assert torch.isfinite(out).all()


def test_plan_finds_last_real_token_for_either_padding_side():
    left = build_plan(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]), layers=[0], bias=1.0)
    right = build_plan(torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]), layers=[0], bias=1.0)
    assert left.last_index.tolist() == [3, 3]
    assert right.last_index.tolist() == [1, 3]
    with pytest.raises(ValueError, match="all padding"):
        build_plan(torch.tensor([[0, 0]]), layers=[0], bias=1.0)
