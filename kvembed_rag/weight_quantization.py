"""int8 weights for the backbone's Linear layers on CPU (``KVEmbedder.from_pretrained(..., weights="int8")``).

torch's dynamic quantisation: each ``nn.Linear`` becomes a ``DynamicQuantizedLinear`` with int8 weights
(one scale per output channel) whose activations are quantised on every call; the int8 products use VNNI
where the CPU has it (fbgemm). Everything else -- embeddings, norms, attention, the re-routed slot --
stays in float32, so the attention backend is untouched. One invariance weakens: the activations get
one scale per call (per tensor, fbgemm's only dynamic scheme), so a text's vector moves slightly with
what it is batched with (padding rows included), and batched = alone holds only approximately. On
Gemma-3-270M, whose activations have large outlier channels, the per-tensor scale ruins quality
(STS-B 0.705 -> 0.091, docs/RESULTS.md): never a default, test it on your model. torchao's CPU int8 path
needs ``torch.compile`` to be fast, so torch's own eager kernels are used (``torch.ao.quantization`` is
marked deprecated in favour of torchao, but is still the fast eager CPU path in torch 2.13).

Measured cost and speed: docs/RESULTS.md ("bfloat16 and int8 on CPU").
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

#: values of ``from_pretrained(weights=...)``
WEIGHT_FORMATS = ("float", "int8")


def check_weights(weights: str | None) -> str:
    """Normalise a ``weights=`` option; raise ValueError for an unknown one."""
    name = (weights or "float").lower()
    if name not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}; got {weights!r}")
    return name


def quantize_linear_layers(model: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` in place by a dynamic int8 one; return how many were replaced.

    The model must be float32 on the CPU (the int8 kernels take float32 activations).
    """
    first = next(model.parameters(), None)
    if first is not None and (first.device.type != "cpu" or first.dtype != torch.float32):
        raise ValueError(
            f"int8 weights need a float32 model on the CPU; this one is {first.dtype} on {first.device}. "
            "Load it with device='cpu', dtype='float32' (weights='int8' does that when dtype is 'auto')."
        )
    count = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    with warnings.catch_warnings():
        # torch 2.13 marks torch.ao.quantization as moving to torchao; its eager int8 kernels are still the fast ones
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return count


def quantized_linear_count(model: torch.nn.Module) -> int:
    """How many dynamic int8 Linear layers ``model`` has (0 for a float model)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return sum(isinstance(m, DynamicLinear) for m in model.modules())


def weights_description(model: torch.nn.Module) -> dict[str, Any] | None:
    """What :meth:`KVEmbedder.describe` records under ``"weights"``; None for plain float weights."""
    count = quantized_linear_count(model)
    if not count:
        return None
    scheme = "torch dynamic: per-channel weights, per-call activations"
    return {"format": "int8", "scheme": scheme, "linear_layers": count}
