"""Every ```python block of the README runs as written: on a tiny model in the fast run (``"default"`` is
redirected to a tiny checkpoint), on the real Gemma-3-270M in the slow one. Blocks that need a network or a
package this environment lacks (``mteb``) are skipped, saying why."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)


def _needs(block: str) -> str | None:
    """Why ``block`` cannot run here, or None."""
    if "import mteb" in block and importlib.util.find_spec("mteb") is None:
        return "needs `pip install mteb` and a network (MTEB downloads its tasks)"
    if "http://127.0.0.1:8000" in block:
        return "a client of a running `kvembed-rag serve`: tests/test_serve.py runs these clients against a server"
    return None


def _ids() -> list[str]:
    return [f"block{i}-" + next((w for w in re.findall(r"import (\w+)", b)), "code") for i, b in enumerate(BLOCKS)]


def _run(block: str, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    reason = _needs(block)
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(folder)  # snippets may write (save_local("my-index"))
    exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    return capsys.readouterr().out


def test_readme_has_the_blocks_it_promises():
    assert len(BLOCKS) >= 4
    text = "\n".join(BLOCKS)
    assert "KVFaissVectorStore.from_documents(docs" in text and "docs = [" in text  # docs is defined


@pytest.fixture
def tiny_default(checkpoints, monkeypatch):
    """``"default"`` resolves to the tiny Llama checkpoint, so the snippets run in seconds."""
    from kvembed_rag import embedder, loading

    real = loading.resolve

    def resolve(spec, **kwargs):
        if str(spec) == "default":
            return real(checkpoints["llama"], **kwargs)
        return real(spec, **kwargs)

    monkeypatch.setattr(embedder, "resolve_location", resolve)
    monkeypatch.setattr(embedder, "_SHARED", {})  # adapters share embedders per process: not the real model's


@pytest.mark.parametrize("block", BLOCKS, ids=_ids())
def test_readme_block_runs_on_a_tiny_model(block, tiny_default, tmp_path, monkeypatch, capsys):
    out = _run(block, tmp_path, monkeypatch, capsys)
    assert out.strip(), "every README snippet prints something"


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=_ids())
def test_readme_block_runs_on_the_real_model(block, tmp_path, monkeypatch, capsys):
    from conftest import PERSISTENT_CACHE

    monkeypatch.setenv("KVEMBED_CACHE", PERSISTENT_CACHE)  # reuse the dequantised default model
    out = _run(block, tmp_path, monkeypatch, capsys)
    assert out.strip()
    if "encode_queries" in block:
        first, second = (float(x) for x in re.findall(r"[-\d.]+", out.splitlines()[0])[:2])
        assert first > second  # the README's comment: the first document scores higher
    if "similarity_search_with_score" in block:
        assert "reset button" in out.splitlines()[0]  # the manual's restart page ranks first
