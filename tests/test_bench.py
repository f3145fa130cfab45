"""kvembed-rag bench on a tiny model: rows, ratios, JSON and chart (numbers are not asserted)."""

from __future__ import annotations

import json

from kvembed_rag.cli import main


def test_bench_writes_rows_and_plot(checkpoints, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", "--model", str(checkpoints["gemma3"]), "--lengths", "16,48", "--methods", "kv,echo,mean"]
    assert main([*argv, "--repeats", "1", "--batch-tokens", "96", "--json", str(out), "--plot", str(png)]) == 0
    payload = json.loads(out.read_text())
    assert [(r["method"], r["length"]) for r in payload["rows"]] == [
        (m, n) for n in (16, 48) for m in ("plain", "kv", "echo", "mean")
    ]
    assert all(r["tokens_per_s"] > 0 and r["batch"] == 96 // r["length"] for r in payload["rows"])
    assert "targets" not in payload  # the issues' targets live in benchmarks/bench_targets.py, not the package
    assert png.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "x plain" in printed and "target" not in printed
