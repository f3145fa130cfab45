"""Model resolution and the GGUF cache's atomic, concurrent-safe materialisation."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import huggingface_hub
import pytest

from kvembed_rag import ModelLoadError, model_specs
from kvembed_rag.loading import MARKER, directory_identity, materialise, pick_dtype, resolve


def _slow_build(folder: Path) -> None:
    for i in range(5):
        (folder / f"part{i}.bin").write_bytes(bytes([i]) * 10_000)
        time.sleep(0.02)


def _worker(target: str, queue) -> None:  # runs in a child process
    queue.put(str(materialise(Path(target), "abc123", _slow_build)))


def test_concurrent_first_builds_leave_one_complete_cache(tmp_path):
    target = tmp_path / "models" / "abc123"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_worker, args=(str(target), queue)) for _ in range(3)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert set(results) == {str(target)}
    assert sorted(p.name for p in target.iterdir()) == [MARKER] + [f"part{i}.bin" for i in range(5)]
    assert json.loads((target / MARKER).read_text())["sha256"] == "abc123"
    assert [p.name for p in target.parent.iterdir()] == ["abc123"]  # no staging folders left behind


def test_valid_cache_is_reused_without_building(tmp_path):
    target = tmp_path / "c"
    materialise(target, "h1", _slow_build)
    calls = []
    materialise(target, "h1", lambda folder: calls.append(folder))
    assert calls == []


def test_stale_or_broken_cache_is_rebuilt(tmp_path):
    target = tmp_path / "c"
    target.mkdir()
    (target / "half-written.bin").write_bytes(b"x")  # no marker: a crash mid-build by an old version
    materialise(target, "h2", _slow_build)
    assert not (target / "half-written.bin").exists() and (target / "part4.bin").exists()
    (target / MARKER).write_text("{corrupt")
    materialise(target, "h2", _slow_build)
    assert json.loads((target / MARKER).read_text())["sha256"] == "h2"


def test_failed_build_leaves_nothing(tmp_path):
    target = tmp_path / "c"

    def broken(folder: Path) -> None:
        (folder / "partial").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        materialise(target, "h3", broken)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_directory_identity_sees_different_weights(tmp_path):
    from tiny_models import build_checkpoint

    a = build_checkpoint("llama", tmp_path / "a", seed=0)
    b = build_checkpoint("llama", tmp_path / "b", seed=1)
    assert directory_identity(a) != directory_identity(b)
    assert directory_identity(a) == directory_identity(a)
    assert resolve(a)[1].kind == "directory"


def test_resolution_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        resolve(tmp_path / "x.gguf")
    with pytest.raises(ModelLoadError, match=r"no such directory or file: \./nope"):
        resolve("./nope")  # a path, not "Repo id must use alphanumeric chars"
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="unsupported model file"):
        resolve(tmp_path / "file.txt")
    (tmp_path / "model.safetensors").write_text("x")
    with pytest.raises(ModelLoadError, match="pass the folder that holds it"):
        resolve(tmp_path / "model.safetensors")
    # a hub id fails at once when offline (conftest sets HF_HUB_OFFLINE=1), pointing at 'default'
    with pytest.raises(ModelLoadError, match=r"HF_HUB_OFFLINE is set.*--model default"):
        resolve("Qwen/Qwen3-4B")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(model_specs, "_hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        resolve("Qwen/Qwen3-4B")
    monkeypatch.setattr(model_specs, "_hub_reachable", lambda timeout=2.0: True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--Qwen--Qwen3-4B" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    asked = []

    def download(repo_id, filename, revision=None):
        asked.append((repo_id, filename, revision))
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    source = resolve("Qwen/Qwen3-4B")[1]
    # identified by the commit the branch points at now, not by "main": caches keyed by it go stale when it moves
    assert source.kind == "hub" and source.identity == commit and source.to_dict()["revision"] == "main"
    assert resolve("Qwen/Qwen3-4B", revision=commit)[1].identity == commit  # a commit needs no look-up
    assert asked == [("Qwen/Qwen3-4B", "config.json", None)]


def test_hub_reachability_check_says_no_without_sockets():
    assert model_specs._hub_reachable(timeout=2.0) is False  # pytest-socket blocks sockets: one try, no retries


def test_dtype_choice():
    import torch

    assert pick_dtype(None, torch.device("cpu")) == torch.float32
    assert pick_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        pick_dtype("int8", torch.device("cpu"))


def test_named_models_match_the_resolver():
    from kvembed_rag.loading import DEFAULT_MODEL, PACKAGED_GGUF

    assert set(model_specs.NAMED_MODELS) == {DEFAULT_MODEL, *PACKAGED_GGUF}
