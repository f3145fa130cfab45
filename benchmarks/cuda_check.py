"""CUDA sanity checks on tiny random checkpoints: batched = alone and SDPA = eager, in bf16 and fp32.

python benchmarks/cuda_check.py        (needs a CUDA device; prints one line per case)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_models import ARCHITECTURES, build_checkpoint

from kvembed_rag import KVEmbedder

TEXTS = ["fox", "The quick brown fox jumps over the lazy dog. " * 12, "", "Retrieval needs embeddings."]


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device; nothing to check")
        return 0
    root = Path(tempfile.mkdtemp())
    for arch in ARCHITECTURES:
        path = str(build_checkpoint(arch, root / arch))
        for dtype in ("bfloat16", "float32"):
            for method in ("kv", "echo", "bidirectional", "token-prepending"):
                e = KVEmbedder.from_pretrained(path, method=method, device="cuda", dtype=dtype, padding_side="left")
                batched = e.encode(TEXTS)
                alone = np.stack([e.encode(t) for t in TEXTS])
                eager = KVEmbedder.from_pretrained(
                    path, method=method, device="cuda", dtype=dtype, attn_implementation="eager", layers=e.layers
                )
                print(
                    f"{arch:8s} {dtype:9s} {method:17s} batched-vs-alone {np.abs(batched - alone).max():.2e} "
                    f"sdpa-vs-eager {np.abs(batched - eager.encode(TEXTS)).max():.2e} "
                    f"finite {bool(np.isfinite(batched).all())}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
