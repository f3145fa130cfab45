"""Shared fixtures: tiny random checkpoints built once per session, embedders cached per configuration."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# dtype="auto" (the default) would pick bfloat16 on CPUs with native bf16; the suite's tolerances are float32's,
# so pin what "auto" means here (also in Ray workers, which inherit the environment). tests/test_hardware.py
# checks the auto rule itself with the detection monkeypatched.
os.environ["KVEMBED_AUTO_DTYPE"] = "float32"

from tiny_models import ARCHITECTURES, build_checkpoint

from kvembed_rag import KVEmbedder

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


#: where the real default model's dequantised checkpoint lives between runs (slow tests reuse it)
PERSISTENT_CACHE = os.environ.get("KVEMBED_CACHE") or str(Path.home() / ".cache" / "kvembed-rag")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tiny models' layer selections and caches go to a fresh directory, never the user's cache."""
    os.environ["KVEMBED_CACHE"] = str(tmp_path_factory.mktemp("kvembed-cache"))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_checkpoint(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def make_embedder(checkpoints: dict[str, Path]) -> Any:
    cache: dict[tuple[Any, ...], KVEmbedder] = {}

    def make(arch: str = "llama", **kwargs: Any) -> KVEmbedder:
        key = (arch, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in cache:
            cache[key] = KVEmbedder.from_pretrained(str(checkpoints[arch]), **kwargs)
        return cache[key]

    return make
