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
  ``sdpa_attention_forward`` unchanged, so they keep the fast kernels.
* ``"kvembed_eager"`` -- an explicit matmul/softmax reference, used by the tests to pin the SDPA path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .errors import UnsupportedAttentionError

ATTN_SDPA = "kvembed"
ATTN_EAGER = "kvembed_eager"
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
    """

    layers: frozenset[int] = frozenset()
    last_index: torch.Tensor | None = None
    bias: float = 1.0
    key_padding: torch.Tensor | None = None
    bidirectional: bool = False
    trace: list[int | None] | None = field(default=None)

    def reroutes(self, layer_idx: int | None) -> bool:
        return layer_idx is not None and layer_idx in self.layers


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
    if plan is None or not (plan.bidirectional or plan.reroutes(layer_idx)):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if not plan.bidirectional:
        merged = _rerouted_by_lse_merge(module, query, key, value, attention_mask, plan, scaling, kwargs)
        if merged is not None:
            return merged, None
    key, value, mask = _prepare(module, query, key, value, attention_mask, plan, kwargs.get("sliding_window"))
    # the explicit float mask is always given: SDPA with mask=None and one extra key would crop the keys
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=0.0, scale=_scaling(module, query, scaling)
    )  # (B, Hq, Q, D)
    return out.transpose(1, 2).contiguous(), None  # (B, Q, Hq, D)


#: torch's CPU flash kernel, which (unlike the public SDPA call) also returns each row's log-sum-exp
_CPU_FLASH_WITH_LSE = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _rerouted_by_lse_merge(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    plan: ReroutingPlan,
    scaling: float | None,
    kwargs: dict[str, Any],
) -> torch.Tensor | None:
    """Re-routed attention as the stock kernel plus one merged slot; None where that kernel is unavailable.

    Softmax over ``[slot, keys]`` equals the softmax over ``keys`` (output ``O``, log-sum-exp ``L``) mixed with
    the slot's value by the slot's share ``w = sigmoid(l0 - L)``, where ``l0 = scale * q.k0 + bias``:
    ``out = (1 - w) O + w v0``. So the re-routed layers keep the fast causal kernel (no ``(B, 1, Q, K+1)``
    float mask, which made them about 2x slower at 4,096 tokens) and add only a ``(B, H, Q)`` dot product.
    """
    if _CPU_FLASH_WITH_LSE is None or query.device.type != "cpu" or query.dtype not in (torch.float32, torch.bfloat16):
        return None
    batch, heads, q_len, _ = query.shape  # (B, Hq, Q, D)
    kv_len = key.shape[2]
    if q_len != kv_len or heads % key.shape[1]:
        return None
    scale = _scaling(module, query, scaling)
    if attention_mask is None:  # transformers left it out: purely causal, no padding, inside any window
        mask, visible = None, None
    else:
        allowed = _allowed_keys(plan, attention_mask, q_len, kv_len, batch, query.device, kwargs.get("sliding_window"))
        mask = _additive_mask(allowed, None, query.dtype)  # (B, 1, Q, K)
        visible = allowed.any(dim=-1)  # (B, 1, Q): rows that see at least one real key
    main, lse = _CPU_FLASH_WITH_LSE(
        query, key, value, 0.0, mask is None, attn_mask=mask, scale=scale
    )  # (B, Hq, Q, D), (B, Hq, Q)
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
    """Register both backends and their mask function with transformers (idempotent)."""
    for key, fn in ((ATTN_SDPA, kv_sdpa_attention_forward), (ATTN_EAGER, kv_eager_attention_forward)):
        AttentionInterface.register(key, fn)
        # boolean masks for both: the functions turn them into additive masks with the prefix column
        AttentionMaskInterface.register(key, sdpa_mask)


def resolve_backend(attn_implementation: str | None) -> str:
    """Map a user's ``attn_implementation`` to a registry key, refusing kernels with no place for the bias."""
    name = (attn_implementation or "sdpa").lower()
    if name in BACKENDS.values():
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
