"""kvembed-rag bench on a tiny model: rows, targets report, JSON and chart (numbers are not asserted)."""

from __future__ import annotations

import json

from kvembed_rag.cli import main
from kvembed_rag.eval.throughput import BenchRow, check_targets


def test_bench_writes_rows_targets_and_plot(checkpoints, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", "--model", str(checkpoints["gemma3"]), "--lengths", "16,48", "--methods", "kv,echo,mean"]
    assert main([*argv, "--repeats", "1", "--batch-tokens", "96", "--json", str(out), "--plot", str(png)]) == 0
    payload = json.loads(out.read_text())
    assert [(r["method"], r["length"]) for r in payload["rows"]] == [
        (m, n) for n in (16, 48) for m in ("plain", "kv", "echo", "mean")
    ]
    assert all(r["tokens_per_s"] > 0 and r["batch"] == 96 // r["length"] for r in payload["rows"])
    assert {t["target"] for t in payload["targets"]} == {
        "kv >= 0.95x plain tokens/s",
        "echo <= 0.6x kv tokens/s",
        "kv peak <= 1.2x plain",
    }
    assert png.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "target kv >= 0.95x plain" in printed and "x plain" in printed


def test_check_targets_reads_ratios():
    rows = [
        BenchRow("plain", 4096, 1, 1000.0, 1.0, 100.0, 1.0),
        BenchRow("kv", 4096, 1, 970.0, 0.97, 130.0, 1.0),
        BenchRow("echo", 4096, 1, 500.0, 0.5, 200.0, 2.0),
    ]
    checks = {c["target"]: c for c in check_targets(rows)}
    assert checks["kv >= 0.95x plain tokens/s"]["ok"] is True
    assert abs(checks["echo <= 0.6x kv tokens/s"]["value"] - 500 / 970) < 1e-9
    assert checks["kv peak <= 1.2x plain"]["ok"] is False  # 1.3x
