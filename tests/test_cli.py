"""CLI commands on a tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kvembed_rag.cli import main


def test_embed_to_npy_and_json(checkpoints, tmp_path, capsys):
    model = str(checkpoints["llama"])
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\nsecond text\n\n")
    out = tmp_path / "v.npy"
    assert main(["embed", "--model", model, "--input", str(texts), "--out", str(out), "-q"]) == 0
    vectors = np.load(out)
    assert vectors.shape == (2, 64)
    assert main(["embed", "--model", model, "--text", "first text", "--json", "-q"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    np.testing.assert_allclose(payload["vectors"][0], vectors[0], atol=1e-6)
    assert payload["embedder"]["method"] == "kv"


def test_embed_jsonl_roundtrip(checkpoints, tmp_path):
    model = str(checkpoints["qwen3"])
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["embed", "--model", model, "--input", str(source), "--out", str(out), "--role", "query", "-q"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["a", "b"] and len(rows[0]["vector"]) == 64


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["embed", "--input", "/nonexistent/file.txt"], 2, "no such file"),
        (["embed", "--text", "x", "--layers", "a,b"], 2, "layers must be"),
        (["embed", "--text", "x", "--out", "v.csv"], 2, ".npy or .jsonl"),
        (["frobnicate"], 2, ""),
    ],
)
def test_usage_errors_exit_2(checkpoints, argv, code, message, capsys):
    if argv[0] == "embed":
        argv = [*argv, "--model", str(checkpoints["llama"]), "-q"]
    assert main(argv) == code
    assert message in capsys.readouterr().err


def test_bad_jsonl_names_the_line(checkpoints, tmp_path, capsys):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "ok"}\nnot json\n')
    assert main(["embed", "--model", str(checkpoints["llama"]), "--input", str(source), "-q"]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_missing_model_is_usage_and_broken_model_is_failure(tmp_path, capsys):
    assert main(["info", "--model", str(tmp_path / "missing.gguf")]) == 2  # checked before loading
    assert "no such GGUF file" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert main(["info", "--model", str(broken)]) == 1  # exists, but will not load
    assert "kvembed-rag info: error:" in capsys.readouterr().err


def test_info_json(checkpoints, capsys):
    assert main(["info", "--model", str(checkpoints["gemma3"]), "--method", "echo", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "echo" and info["model_type"] == "gemma3_text"


def test_help_mentions_examples(capsys):
    assert main(["embed", "--help"]) == 0
    assert "examples:" in capsys.readouterr().out
