"""How far two computations of the same text may differ, per dtype, for the invariance checks.

From the worst case measured on the tiny checkpoints (python benchmarks/bf16_variance.py tiny, and the hidden
states of tests/test_invariance.py), with a margin of 2-4x. float32 differs by summation order only.
bfloat16 keeps 8 bits of mantissa: a kernel that sums in another order for another batch shape or padded
width (attention over padded keys, the merged slot's log-sum-exp, GEMM blocking) flips the rounding of some
activations by one bf16 step (2^-8 relative), and the layers after it carry that on.
"""

from __future__ import annotations

DTYPES = ["float32", "bfloat16"]

#: final unit vectors, batched vs alone, any batch budget, threads, served vs in-process:
#: measured float32 <= 4.8e-7, bfloat16 <= 5.1e-3
VECTOR_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}
#: final unit vectors, sdpa vs eager attention: measured float32 <= 4.2e-7, bfloat16 <= 1.03e-2 (the eager
#: reference rounds the softmax weights to bf16 before the value product; the fused kernel does not)
KERNEL_TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-2}
#: bias -1e4 vs no re-routing: measured 0.0 in both dtypes (the slot's share underflows to exactly 0)
MUTED_TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-5}
#: last hidden states (|h| <= 4.2, not normalised), sdpa vs eager and merged slot vs explicit mask: measured
#: float32 <= 6.4e-6, bfloat16 <= 0.111 (3-4 bf16 steps at that magnitude, where one step is 2^-5)
HIDDEN_TOLERANCE = {"float32": 1e-5, "bfloat16": 0.25}


def dtype_option(dtype: str) -> dict[str, str]:
    """Keyword for make_embedder: float32 stays the suite's default (and shares its cached embedders)."""
    return {} if dtype == "float32" else {"dtype": dtype}
