"""The attention backend that performs KV re-routing, registered with transformers.

KV-Embedding re-routes, inside a few chosen layers, the key and value that the layer just computed for
each sequence's final real token: they become slot 0 of that layer's keys and values, every query row
may attend to it, and an additive logit bias ``b`` on slot 0 sets how strongly. Nothing else changes:
no extra input token, no position id, no second pass.

The hook is transformers' supported extension point, not copied model code: an attention function
registered in ``AttentionInterface`` together with a mask function in ``AttentionMaskInterface``
(without the latter transformers hands the function ``attention_mask=None`` and padding leaks in).
The per-call :class:`ReroutingPlan` travels as the ``kv_plan`` keyword of ``model(...)``; transformers
forwards unknown keywords down to the attention function, and ``module.layer_idx`` says which layer runs.

Two backends are registered:

* ``"kvembed"`` -- torch SDPA. Layers the plan does not touch call transformers' own
  ``sdpa_attention_forward`` unchanged, so they keep the fast kernels -- except, on CPU, masked layers over
  long inputs (sliding-window layers, padded batches), which run the same kernel block by block over the
  band of keys the mask leaves open (exact; see :func:`_cpu_flash_with_lse`).
* ``"kvembed_eager"`` -- an explicit matmul/softmax reference, used by the tests to pin the SDPA path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .errors import UnsupportedAttentionError

ATTN_SDPA = "kvembed"
ATTN_EAGER = "kvembed_eager"
#: SDPA with re-routed layers always on the explicit-mask path (the merged slot's reference: benchmarks and checks)
ATTN_SDPA_EXPLICIT = "kvembed_explicit"
PLAN_KWARG = "kv_plan"

#: attention implementations a user may ask for, mapped to the registry keys this module owns
BACKENDS = {"sdpa": ATTN_SDPA, "eager": ATTN_EAGER}
_REFUSED = ("flash", "flex", "paged")


@dataclass(eq=False)
class ReroutingPlan:
    """What one forward pass should do differently from the stock model.

    Attributes:
        layers: layer indices whose attention gets the re-routed prefix slot.
        last_index: ``(B,)`` long tensor, each row's last real token (from the 2-D padding mask).
        bias: additive attention logit on the prefix slot (``-1e4`` switches re-routing off).
        key_padding: ``(B, T)`` bool, True at real tokens; needed when ``bidirectional``.
        bidirectional: drop the causal mask in every layer (an ablation; padding stays masked).
        trace: when a list, each call appends its ``layer_idx`` (the load-time dispatch probe).
        padded: whether any row has padding (False only when :func:`build_plan` saw none): without padding a
            layer's mask is exactly causal wherever no window is shorter than the input, and the causal kernel
            runs without a materialised mask.
    """

    layers: frozenset[int] = frozenset()
    last_index: torch.Tensor | None = None
    bias: float = 1.0
    key_padding: torch.Tensor | None = None
    bidirectional: bool = False
    trace: list[int | None] | None = field(default=None)
    padded: bool = True

    def reroutes(self, layer_idx: int | None) -> bool:
        return layer_idx is not None and layer_idx in self.layers

    def causal_without_mask(self, attention_mask: torch.Tensor | None, q_len: int, window: int | None) -> bool:
        """True when a layer's boolean mask (transformers' ``sdpa_mask``: padding, causality and the window from index
        arithmetic) is plain causal attention: no padding, not bidirectional, no window shorter than the input."""
        return (
            attention_mask is not None
            and attention_mask.dtype == torch.bool
            and attention_mask.shape[-1] == q_len
            and not self.padded
            and not self.bidirectional
            and (window is None or q_len <= window)
        )


def build_plan(
    attention_mask: torch.Tensor,
    layers: Iterable[int],
    bias: float,
    *,
    bidirectional: bool = False,
) -> ReroutingPlan:
    """Plan from the 2-D padding mask; the last real token is found in the mask, so either padding side works."""
    mask = attention_mask.bool()  # (B, T)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, T)
    last_index = torch.where(mask, positions, -1).amax(dim=1)  # (B,)
    if bool((last_index < 0).any()):
        raise ValueError("every row needs at least one real token; got a row that is all padding")
    return ReroutingPlan(
        layers=frozenset(int(i) for i in layers),
        last_index=last_index,
        bias=float(bias),
        key_padding=mask,
        bidirectional=bidirectional,
        padded=not bool(mask.all()),
    )


def _allowed_keys(
    plan: ReroutingPlan,
    attention_mask: torch.Tensor | None,
    q_len: int,
    kv_len: int,
    batch: int,
    device: torch.device,
    sliding_window: int | None,
) -> torch.Tensor:
    """Boolean ``(B, 1, Q, K)``: which real keys each query may see (the prefix slot comes later)."""
    q_pos = torch.arange(q_len, device=device)[:, None]  # (Q, 1)
    k_pos = torch.arange(kv_len, device=device)[None, :]  # (1, K)
    if plan.bidirectional:
        if plan.key_padding is None:
            raise ValueError("a bidirectional plan needs key_padding (the 2-D attention mask)")
        allowed = plan.key_padding[:, None, None, :kv_len].expand(batch, 1, q_len, kv_len)
        if sliding_window is not None:
            allowed = allowed & ((q_pos - k_pos).abs() < sliding_window)
        return allowed
    if attention_mask is None:
        # transformers only skips the mask when it is purely causal (no padding, inside any window)
        return (k_pos <= q_pos + (kv_len - q_len)).view(1, 1, q_len, kv_len).expand(batch, 1, q_len, kv_len)
    if attention_mask.dtype == torch.bool:
        return attention_mask.expand(batch, 1, q_len, kv_len)
    # an additive float mask (a caller-made 4-D mask): 0 where allowed, a large negative number elsewhere
    return (attention_mask > torch.finfo(attention_mask.dtype).min / 2).expand(batch, 1, q_len, kv_len)


def _additive_mask(allowed: torch.Tensor, bias: float | None, dtype: torch.dtype) -> torch.Tensor:
    """Float mask ``(B, 1, Q, K[+1])``: 0 / -inf over real keys, ``bias`` on a leading prefix column if given."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask = mask.masked_fill(~allowed, float("-inf"))  # a new tensor: the shared 4-D mask is never touched
    if bias is None:
        return mask
    prefix = torch.full((*allowed.shape[:3], 1), bias, dtype=dtype, device=allowed.device)  # (B, 1, Q, 1)
    return torch.cat([prefix, mask], dim=-1)  # (B, 1, Q, 1 + K)


def _last_token_kv(plan: ReroutingPlan, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's final real key and value, per KV head, before any GQA repetition: ``(B, Hkv, 1, D)`` each."""
    if plan.last_index is None:
        raise ValueError("a re-routing plan needs last_index")
    rows = torch.arange(key.shape[0], device=key.device)
    last = plan.last_index.to(key.device)
    return key[rows, :, last, :].unsqueeze(2), value[rows, :, last, :].unsqueeze(2)


def _prepend_last_token(
    plan: ReroutingPlan, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot 0 = each row's final real key/value."""
    k0, v0 = _last_token_kv(plan, key, value)
    return torch.cat([k0, key], dim=2), torch.cat([v0, value], dim=2)  # (B, Hkv, 1 + T, D)


def _prepare(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    plan: ReroutingPlan,
    sliding_window: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, _, q_len, _ = query.shape  # (B, Hq, Q, D)
    kv_len = key.shape[2]
    allowed = _allowed_keys(plan, attention_mask, q_len, kv_len, batch, query.device, sliding_window)
    reroute = plan.reroutes(getattr(module, "layer_idx", None))
    if reroute:
        key, value = _prepend_last_token(plan, key, value)
    mask = _additive_mask(allowed, plan.bias if reroute else None, query.dtype)
    groups = getattr(module, "num_key_value_groups", query.shape[1] // key.shape[1])
    return repeat_kv(key, groups), repeat_kv(value, groups), mask  # (B, Hq, K', D) twice, (B, 1, Q, K')


def _scaling(module: torch.nn.Module, query: torch.Tensor, scaling: float | None) -> float:
    if scaling is not None:
        return float(scaling)
    return float(getattr(module, "head_dim", query.shape[-1])) ** -0.5


def _reference(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    scaling: float,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, Hq, Q, K')
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    # rows with no visible key (padding queries) give NaN weights; zero them, they are never pooled
    weights = torch.nan_to_num(weights, nan=0.0)
    out = torch.matmul(weights, value)  # (B, Hq, Q, D)
    return out.transpose(1, 2).contiguous(), weights  # (B, Q, Hq, D)


def kv_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    kv_plan: ReroutingPlan | None = None,
    _merged_slot: bool = True,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA attention with KV re-routing in the layers the plan names; stock SDPA everywhere else."""
    plan = kv_plan
    layer_idx = getattr(module, "layer_idx", None)
    if plan is not None and plan.trace is not None:
        plan.trace.append(layer_idx)
    softcap = kwargs.get("softcap")
    if softcap is not None:  # SDPA has no softcap (Gemma2): the reference computes it exactly
        return kv_eager_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout,
            scaling,
            kv_plan=None if plan is None else plan,
            _traced=True,
            **kwargs,
        )
    if plan is not None and not (plan.bidirectional or plan.reroutes(layer_idx)):
        banded = _banded_stock(
            query, key, value, attention_mask, plan, _scaling(module, query, scaling), kwargs.get("sliding_window")
        )
        if banded is not None:
            return banded, None
    if plan is None or not (plan.bidirectional or plan.reroutes(layer_idx)):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if not plan.bidirectional and _merged_slot:
        merged = _rerouted_by_lse_merge(module, query, key, value, attention_mask, plan, scaling, kwargs)
        if merged is not None:
            return merged, None
    key, value, mask = _prepare(module, query, key, value, attention_mask, plan, kwargs.get("sliding_window"))
    # the explicit float mask is always given: SDPA with mask=None and one extra key would crop the keys
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=0.0, scale=_scaling(module, query, scaling)
    )  # (B, Hq, Q, D)
    return out.transpose(1, 2).contiguous(), None  # (B, Q, Hq, D)


def kv_sdpa_explicit_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    kv_plan: ReroutingPlan | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`kv_sdpa_attention_forward` with re-routed layers on the explicit ``(B, 1, Q, K+1)`` mask path (the
    same result to ~1e-6): registered as :data:`ATTN_SDPA_EXPLICIT`, so a model switches paths the transformers
    way, ``model.set_attn_implementation(ATTN_SDPA_EXPLICIT)``, per model rather than process-wide."""
    return kv_sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout, scaling, kv_plan, _merged_slot=False, **kwargs
    )


#: torch's CPU flash kernel, which (unlike the public SDPA call) also returns each row's log-sum-exp
_CPU_FLASH_WITH_LSE = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
#: CUDA kernels that return the log-sum-exp (flash: no mask; memory-efficient: an additive bias)
_CUDA_FLASH_WITH_LSE = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention", None)
_CUDA_EFFICIENT_WITH_LSE = getattr(torch.ops.aten, "_scaled_dot_product_efficient_attention", None)

#: query rows per block of the banded CPU path (cost ~ T * (chunk + window) instead of T * T)
BAND_CHUNK = 256

#: a kernel returning ``(out (B, Hq, Q, D), lse (B, Hq, Q) float32)`` or None where it cannot run; arguments:
#: query, key, value (B, H, T, D; key/value may have fewer heads), allowed ``(B, 1, Q, K)`` bool or None
#: (None: purely causal), scale, sliding window (None: full causal)
LseKernel = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float, int | None],
    tuple[torch.Tensor, torch.Tensor] | None,
]


def _banded(allowed: torch.Tensor, q_len: int, window: int | None) -> bool:
    """True when no query may see a key ahead of it or ``window`` or more behind it (checked on two diagonals).

    transformers builds causal and sliding masks from index arithmetic (``q - window < k <= q``); checking the
    two diagonals just outside that band costs O(B*T), and catches bidirectional or wider-than-said masks.
    """
    rows = torch.arange(q_len - 1, device=allowed.device)
    if bool(allowed[:, 0, rows, rows + 1].any()):  # a key ahead of its query: not causal
        return False
    if window is not None and q_len > window:
        late = torch.arange(window, q_len, device=allowed.device)
        if bool(allowed[:, 0, late, late - window].any()):
            return False
    return True


def _cpu_flash_with_lse(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor | None,
    scale: float,
    window: int | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """torch's CPU flash kernel with its log-sum-exp; a masked call over a long input runs block by block.

    With an explicit mask the kernel cannot skip blocks, so a sliding-window layer at 4,096 tokens would do
    16x the work its 512-key window needs (and a padded full-attention layer 2x the causal work). Rows
    ``[s, s + c)`` only ever see keys ``[s - window + 1, s + c)``, so each block gets that slice of keys and
    of the mask: exact (the keys left out are masked anyway; :func:`_banded` checks it), about
    ``T * (c + window)`` work instead of ``T * T``.
    """
    if _CPU_FLASH_WITH_LSE is None or query.dtype not in (torch.float32, torch.bfloat16):
        return None
    q_len = query.shape[2]
    if allowed is None:
        return _CPU_FLASH_WITH_LSE(query, key, value, 0.0, True, scale=scale)[:2]
    if q_len < 2 * BAND_CHUNK or not _banded(allowed, q_len, window):
        mask = _additive_mask(allowed, None, query.dtype)  # (B, 1, Q, K)
        return _CPU_FLASH_WITH_LSE(query, key, value, 0.0, False, attn_mask=mask, scale=scale)[:2]
    out = query.new_empty((*query.shape[:3], value.shape[-1]))  # (B, Hq, Q, D)
    lse = torch.empty(query.shape[:3], dtype=torch.float32, device=query.device)  # (B, Hq, Q)
    for s in range(0, q_len, BAND_CHUNK):
        e = min(s + BAND_CHUNK, q_len)
        k0 = 0 if window is None else max(0, s - window + 1)
        mask = _additive_mask(allowed[:, :, s:e, k0:e], None, query.dtype)  # (B, 1, c, e - k0)
        block, block_lse = _CPU_FLASH_WITH_LSE(
            query[:, :, s:e], key[:, :, k0:e], value[:, :, k0:e], 0.0, False, attn_mask=mask, scale=scale
        )[:2]
        out[:, :, s:e] = block
        lse[:, :, s:e] = block_lse
    return out, lse


#: the CPU attention kernel with log-sum-exp, public for benchmarks (causal, masked or banded by window)
cpu_attention_with_lse = _cpu_flash_with_lse


def _cuda_with_lse(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor | None,
    scale: float,
    window: int | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """CUDA flash (purely causal, half precision) or memory-efficient (any mask) attention with the log-sum-exp.

    Written without a GPU at hand: :func:`check_merged_slot_kernel` compares it with the explicit-mask path
    once per device and dtype at load, and the embedder falls back (with a warning) if they disagree.
    """
    batch, heads, q_len, dim = query.shape
    groups = heads // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)  # neither aten kernel takes GQA directly
    half = query.dtype in (torch.float16, torch.bfloat16)
    if allowed is None and _CUDA_FLASH_WITH_LSE is not None and half and dim <= 256:
        found = _CUDA_FLASH_WITH_LSE(query, key, value, 0.0, True, False, scale=scale)
        return found[0], found[1].float()[..., :q_len]
    if _CUDA_EFFICIENT_WITH_LSE is None:
        return None
    bias = None
    if allowed is not None:
        kv_len = key.shape[2]
        padded = -(-kv_len // 16) * 16  # the kernel wants the bias's last dimension 16-aligned (as SDPA pads it)
        storage = torch.zeros((batch, heads, q_len, padded), dtype=query.dtype, device=query.device)
        bias = storage[..., :kv_len]
        bias.masked_fill_(~allowed.expand(batch, heads, q_len, kv_len), float("-inf"))
    found = _CUDA_EFFICIENT_WITH_LSE(query, key, value, bias, True, 0.0, allowed is None, scale=scale)
    return found[0], found[1].float()[..., :q_len]  # the log-sum-exp is padded to a multiple of 32 rows


def _default_kernel(device: torch.device) -> LseKernel | None:
    if device.type == "cpu":
        return _cpu_flash_with_lse
    if device.type == "cuda":
        return _cuda_with_lse
    return None


#: (device type, dtype) -> whether the merged-slot kernel agreed with the explicit path at load (see check)
MERGE_VERDICTS: dict[tuple[str, torch.dtype], bool] = {}

#: largest difference tolerated between the merged-slot and the explicit-mask path at the load-time check
MERGE_TOLERANCE = 1e-3


def _rerouted_by_lse_merge(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    plan: ReroutingPlan,
    scaling: float | None,
    kwargs: dict[str, Any],
    kernel: LseKernel | None = None,
) -> torch.Tensor | None:
    """Re-routed attention as the stock kernel plus one merged slot; None where that kernel is unavailable.

    Softmax over ``[slot, keys]`` equals the softmax over ``keys`` (output ``O``, log-sum-exp ``L``) mixed with
    the slot's value by the slot's share ``w = sigmoid(l0 - L)``, where ``l0 = scale * q.k0 + bias``:
    ``out = (1 - w) O + w v0``. So the re-routed layers keep the fast causal kernel (no ``(B, 1, Q, K+1)``
    float mask, which made them about 2x slower at 4,096 tokens) and add only a ``(B, H, Q)`` dot product.
    """
    if kernel is None:
        if not MERGE_VERDICTS.get((query.device.type, query.dtype), query.device.type == "cpu"):
            return None  # not checked (CUDA without a load-time check) or found to disagree: explicit path
        kernel = _default_kernel(query.device)
        if kernel is None:
            return None
    batch, heads, q_len, _ = query.shape  # (B, Hq, Q, D)
    kv_len = key.shape[2]
    if q_len != kv_len or heads % key.shape[1]:
        return None
    scale = _scaling(module, query, scaling)
    window = kwargs.get("sliding_window")
    if attention_mask is None or plan.causal_without_mask(attention_mask, q_len, window):
        allowed, visible = None, None  # purely causal: no padding, inside any window (transformers may skip the mask)
    else:
        allowed = _allowed_keys(plan, attention_mask, q_len, kv_len, batch, query.device, window)
        # (B, 1, Q): rows that see at least one real key; without padding every row sees itself
        visible = allowed.any(dim=-1) if plan.padded or plan.bidirectional else None
    found = kernel(query, key, value, allowed, scale, window)
    if found is None:
        return None
    main, lse = found  # (B, Hq, Q, D), (B, Hq, Q)
    k0, v0 = _last_token_kv(plan, key, value)  # (B, Hkv, 1, D) each
    groups = heads // key.shape[1]
    k0, v0 = repeat_kv(k0, groups), repeat_kv(v0, groups)  # (B, Hq, 1, D)
    slot_logit = (query @ k0.transpose(2, 3)).squeeze(-1).float() * scale + plan.bias  # (B, Hq, Q)
    share = torch.sigmoid(slot_logit - lse)  # (B, Hq, Q) float32: the slot's softmax weight
    if visible is not None:  # a row with no visible key puts all its weight on the slot (as the full softmax does)
        share = torch.where(visible, share, 1.0)
        main = torch.where(visible[..., None], main, 0.0)
    out = torch.lerp(main, v0.expand_as(main), share[..., None].to(main.dtype))  # (B, Hq, Q, D): (1-w) O + w v0
    return out.transpose(1, 2).contiguous()  # (B, Q, Hq, D)


def _banded_stock(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    plan: ReroutingPlan,
    scale: float,
    window: int | None,
) -> torch.Tensor | None:
    """A layer the plan does not re-route, with a mask, on a long CPU input: the banded kernel; else None."""
    batch, _, q_len, _ = query.shape
    if (
        attention_mask is None
        or attention_mask.dtype != torch.bool
        or query.device.type != "cpu"
        or q_len != key.shape[2]
        or q_len < 2 * BAND_CHUNK
        or query.shape[1] % key.shape[1]
    ):
        return None
    if plan.causal_without_mask(attention_mask, q_len, window):  # e.g. 512 tokens under a 512-token window
        found = _cpu_flash_with_lse(query, key, value, None, scale, window)  # the causal kernel, no mask to build
        return None if found is None else found[0].transpose(1, 2).contiguous()
    allowed = _allowed_keys(plan, attention_mask, q_len, q_len, batch, query.device, window)
    if not _banded(allowed, q_len, window):
        return None
    found = _cpu_flash_with_lse(query, key, value, allowed, scale, window)
    if found is None:
        return None
    out = found[0]  # (B, Hq, Q, D)
    if plan.padded or plan.bidirectional:
        # rows that see no key (padding queries) come back as NaN from an all -inf row; zero them (never pooled).
        # Without padding every causal row sees itself, so the reduction and the copy are skipped.
        out = torch.where(allowed.any(dim=-1)[..., None], out, 0.0)
    return out.transpose(1, 2).contiguous()  # (B, Q, Hq, D)


def check_merged_slot_kernel(
    model: torch.nn.Module, *, kernel: LseKernel | None = None, tolerance: float = MERGE_TOLERANCE
) -> bool:
    """Compare the merged-slot path with the explicit-mask path once per (device, dtype); record the verdict.

    A small random problem at the model's attention shape (two rows, one left-padded; a causal and a
    padded mask) goes through both paths. In half precision the bar is the explicit path's own rounding:
    both are compared with the explicit path computed in float32, and the merged path may be off by at
    most ``tolerance`` plus twice the explicit path's error. If it is off by more, a
    :class:`MergedSlotFallbackWarning` says so and re-routed layers take the explicit-mask path from then on.
    """
    import warnings

    from .errors import MergedSlotFallbackWarning

    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    verdict_key = (device.type, dtype)
    if kernel is None and verdict_key in MERGE_VERDICTS:
        return MERGE_VERDICTS[verdict_key]
    use = kernel or _default_kernel(device)
    if use is None or dtype not in (torch.float32, torch.bfloat16, torch.float16):
        MERGE_VERDICTS[verdict_key] = False
        return False
    config: Any = getattr(model, "config", None)
    heads = int(getattr(config, "num_attention_heads", 4) or 4)
    kv_heads = int(getattr(config, "num_key_value_heads", heads) or heads)
    hidden = int(getattr(config, "hidden_size", 64) or 64)
    dim = int(getattr(config, "head_dim", None) or hidden // heads)
    error, reference_error = _merge_error(use, device, dtype, heads, kv_heads, dim)
    ok = error <= tolerance + (0.0 if dtype == torch.float32 else 2.0 * reference_error)
    MERGE_VERDICTS[verdict_key] = ok
    if not ok:
        warnings.warn(
            f"the merged-slot attention kernel on {device.type} in {str(dtype).removeprefix('torch.')} differs from "
            f"the explicit-mask path by {error:.2e} (tolerance {tolerance:g}"
            + ("" if dtype == torch.float32 else f" + 2 x {reference_error:.1e}, the explicit path's own rounding")
            + "); re-routed layers use the explicit-mask path (correct, slower at long inputs)",
            MergedSlotFallbackWarning,
            stacklevel=2,
        )
    return ok


def _merge_error(
    kernel: LseKernel, device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int, dim: int
) -> tuple[float, float]:
    """Largest ``|merged - explicit(float32)|`` and ``|explicit(dtype) - explicit(float32)|``, padded and not."""
    from types import SimpleNamespace

    generator = torch.Generator().manual_seed(0)
    length = 40
    module: Any = SimpleNamespace(layer_idx=0, num_key_value_groups=heads // kv_heads, head_dim=dim)
    worst, worst_reference = 0.0, 0.0
    for padded in (False, True):
        mask2d = torch.ones((2, length), dtype=torch.long)
        if padded:
            mask2d[1, :7] = 0  # left padding
        q = torch.randn(2, heads, length, dim, generator=generator)
        k = torch.randn(2, kv_heads, length, dim, generator=generator)
        v = torch.randn(2, kv_heads, length, dim, generator=generator)
        plan = build_plan(mask2d.to(device), layers=[0], bias=1.0)
        allowed = None
        if padded:
            causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
            allowed = (causal[None, None] & mask2d.bool()[:, None, None, :]).to(device)  # (B, 1, Q, K)
        qd, kd, vd = (t.to(device=device, dtype=dtype) for t in (q, k, v))
        merged = _rerouted_by_lse_merge(module, qd, kd, vd, allowed, plan, None, {}, kernel=kernel)
        if merged is None:
            return float("inf"), 0.0
        qf, kf, vf = (t.to(device=device, dtype=torch.float32) for t in (q, k, v))
        exact = _explicit(module, qf, kf, vf, allowed, plan)
        rounded = _explicit(module, qd, kd, vd, allowed, plan)
        real = mask2d.bool().to(device)[:, :, None, None]  # compare real query rows only (padding is never pooled)
        worst = max(worst, float(((merged.float() - exact).abs() * real).max()))
        worst_reference = max(worst_reference, float(((rounded.float() - exact).abs() * real).max()))
    return worst, worst_reference


def _explicit(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    plan: ReroutingPlan,
) -> torch.Tensor:
    """The explicit-mask SDPA path of a re-routed layer: ``(B, Q, Hq, D)``."""
    key, value, mask = _prepare(module, query, key, value, attention_mask, plan, None)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=0.0, scale=_scaling(module, query, None)
    )
    return out.transpose(1, 2)


def kv_eager_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    kv_plan: ReroutingPlan | None = None,
    _traced: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit matmul/softmax reference of the same computation (also used for softcapped models)."""
    plan = kv_plan if kv_plan is not None else ReroutingPlan()
    if plan.trace is not None and not _traced:
        plan.trace.append(getattr(module, "layer_idx", None))
    key, value, mask = _prepare(module, query, key, value, attention_mask, plan, kwargs.get("sliding_window"))
    return _reference(module, query, key, value, mask, _scaling(module, query, scaling), kwargs.get("softcap"))


def register() -> None:
    """Register the backends and their mask function with transformers (idempotent)."""
    for key, fn in (
        (ATTN_SDPA, kv_sdpa_attention_forward),
        (ATTN_SDPA_EXPLICIT, kv_sdpa_explicit_attention_forward),
        (ATTN_EAGER, kv_eager_attention_forward),
    ):
        AttentionInterface.register(key, fn)
        # boolean masks for both: the functions turn them into additive masks with the prefix column
        AttentionMaskInterface.register(key, sdpa_mask)


def resolve_backend(attn_implementation: str | None) -> str:
    """Map a user's ``attn_implementation`` to a registry key, refusing kernels with no place for the bias."""
    name = (attn_implementation or "sdpa").lower()
    if name in (*BACKENDS.values(), ATTN_SDPA_EXPLICIT):
        return name
    if name in BACKENDS:
        return BACKENDS[name]
    if any(word in name for word in _REFUSED):
        raise UnsupportedAttentionError(
            f"attn_implementation={attn_implementation!r} cannot carry KV re-routing: flash, flex and paged kernels "
            "have no place for the additive bias on the prefix slot (and sliding-window kernels would hide it). "
            "Use attn_implementation='sdpa' (default, fast) or 'eager' (reference)."
        )
    raise UnsupportedAttentionError(
        f"unknown attn_implementation={attn_implementation!r}; choose one of {sorted(BACKENDS)}"
    )


register()


def probe_dispatch(model: torch.nn.Module, num_layers: int) -> None:
    """Raise :class:`UnsupportedModelError` unless every layer's attention reaches this backend with the plan.

    One forward pass over two tokens: cheap, and it catches models with their own attention code, models
    that drop unknown forward keywords, and models whose layers lack ``layer_idx``.
    """
    from .errors import UnsupportedModelError

    supported = "Llama, Mistral, Qwen2/3, Gemma2/3, SmolLM and other decoder-only models of transformers 5"
    name = type(model).__name__
    device = next(model.parameters()).device
    ids = torch.ones((1, 2), dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    plan = build_plan(mask, layers=range(num_layers), bias=-1e4)
    plan.trace = []
    try:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, **{PLAN_KWARG: plan})
    except (TypeError, KeyError, NotImplementedError, ValueError) as exc:
        raise UnsupportedModelError(
            f"{name} failed a forward pass with the KV re-routing backend ({type(exc).__name__}: {exc}); it does not "
            f"dispatch attention through transformers' AttentionInterface. Supported: {supported}."
        ) from exc
    seen = sorted({i for i in plan.trace if i is not None})
    if seen != list(range(num_layers)) or None in plan.trace:
        raise UnsupportedModelError(
            f"{name} does not dispatch attention through transformers' AttentionInterface in every layer "
            f"(reached the registered backend from layers {seen} of {num_layers}); KV re-routing cannot hook it. "
            f"Supported: {supported}."
        )
