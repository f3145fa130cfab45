"""What a new user meets first: a command line that answers at once, clear usage errors (exit 2) before any
model loads, progress per batch, a demo index that is reused, one UTF-8 policy, and readable plots."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kvembed_rag.cli import COMMANDS, build_parser, main
from kvembed_rag.retrieval.documents import SourceDocument
from kvembed_rag.retrieval.pipeline import build_index

ROOT = Path(__file__).resolve().parents[1]

#: runs each argv through main() in one fresh interpreter and reports the exit code and heavy imports
RUNNER = r"""
import contextlib, io, json, sys, time
from kvembed_rag.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    heavy = sorted(m for m in ("torch", "transformers", "faiss", "numpy") if m in sys.modules)
    results.append({"argv": argv, "code": code, "heavy": heavy, "err": err.getvalue(), "out": out.getvalue(),
                    "seconds": time.perf_counter() - start})
print(json.dumps(results))
"""


def _run_fresh(cases: list[list[str]], tmp_path: Path) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(cases)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'integrations'}"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_help_version_and_usage_errors_never_import_torch(tmp_path):
    names = [build_parser()._subparsers._group_actions[0].choices]  # type: ignore[union-attr]
    commands = sorted(names[0])
    assert len(commands) == len(COMMANDS)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "manifest.json").write_text("{}")
    help_cases = [["--help"], ["--version"]] + [[name, "--help"] for name in commands]
    usage_cases = [
        (["embed", "--text", "x", "--max-length", "-5"], "--max-length: must be >= 1"),
        (["embed", "--text", "x", "--batch-tokens", "0"], "--batch-tokens: must be >= 1"),
        (["embed", "--text", "x", "--model", "./nope"], "no such directory or file: ./nope"),
        (["embed", "--text", "x", "--out", "no-such-dir/v.npy"], "does not exist"),
        (["embed", "--input", "latin1.txt"], "latin1.txt: not UTF-8 text: byte 0xe9 at offset 3"),
        (["index", "latin1.txt", "--out", "idx"], "latin1.txt: not UTF-8 text: byte 0xe9 at offset 3"),
        (["index", "missing-folder", "--out", "idx"], "missing-folder: no such file or folder"),
        (["search", "no-such-index", "q"], "no-such-index is not a kvembed-rag index"),
        (["search", "index", "q", "-k", "0"], "-k: must be >= 1"),
        (["search", "index", "q", "--hybrid", "weighted:lots"], "--hybrid: hybrid 'weighted:lots'"),
        (["index", "latin1.txt", "--out", "idx", "--passage-tokens", "8"], "at least 16 text tokens"),
        (["index", "latin1.txt", "--out", "idx", "--hybrid", "weighted:2"], "--hybrid:"),
        (
            [
                "postprocess",
                "fit",
                "latin1.txt",
                "--spec",
                "center",
                "--out",
                "s.safetensors",
                "--passage-tokens",
                "-1",
            ],
            "at least 16 text tokens",
        ),
        (["select-layers", "--plot", "/nonexistent-dir/x.png"], "/nonexistent-dir does not exist"),
        (["select-layers", "--layers", "3,4"], "drop --layers"),
        (["demo", "--limit", "0"], "--limit: must be >= 1"),
        (["eval", "sts", "missing.tsv"], "missing.tsv: no such file or folder"),
        (["eval", "sts", "latin1.txt", "--limit", "0"], "--limit: must be >= 1"),
        (["tune", "sts", "latin1.txt", "--poolings", "max"], "--poolings"),
        (["bench", "--lengths", "0"], "--lengths needs positive integers"),
        (["frobnicate"], "invalid choice"),
    ]
    results = _run_fresh(help_cases + [argv for argv, _ in usage_cases], tmp_path)
    for result in results[: len(help_cases)]:
        assert result["code"] == 0, result
        assert result["out"].strip(), result["argv"]
    for result, (_, message) in zip(results[len(help_cases) :], usage_cases, strict=True):
        assert result["code"] == 2, result
        assert message in result["err"], (result["argv"], result["err"])
    for result in results:
        assert "torch" not in result["heavy"] and "transformers" not in result["heavy"], result["argv"]
    print("--help answered in", f"{results[0]['seconds'] * 1000:.0f} ms (in a fresh interpreter, after import)")


def test_python_dash_m_and_the_console_script_target(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kvembed_rag", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'integrations'}"},
    )
    assert result.returncode == 0 and result.stdout.startswith("kvembed-rag ")
    text = (ROOT / "pyproject.toml").read_text()
    assert 'kvembed-rag = "kvembed_rag.cli:main"' in text


def test_commands_are_one_module_each():
    import importlib

    for name in COMMANDS:
        module = importlib.import_module(name, "kvembed_rag.cli")
        assert callable(module.add_arguments) and callable(module.run), name


# ---------------------------------------------------------------- the demo corpus hashes the same everywhere

HASHES = (
    "import json; from kvembed_rag.retrieval.documents import DEMO_MODULES, EXAMPLE_MODULES, stdlib_documents; "
    "from kvembed_rag.retrieval.pipeline import content_hash; "
    "print(json.dumps({d.id: content_hash(d.text) for d in stdlib_documents(DEMO_MODULES + EXAMPLE_MODULES)}))"
)


def test_demo_corpus_hashes_equal_across_processes(tmp_path):
    runs = []
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", HASHES],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**__import__("os").environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        runs.append(json.loads(result.stdout))
    assert len(runs[0]) >= 19 and runs[0] == runs[1]


def test_pydoc_addresses_are_normalised():
    from kvembed_rag.retrieval.documents import normalise_pydoc, stdlib_documents

    assert normalise_pydoc("<function copy2 at 0x7f3a9c1d2e80>") == "<function copy2 at 0x...>"
    assert normalise_pydoc("mode 0x1ff") == "mode 0x1ff"  # short hex numbers are documentation, kept
    (shutil_page,) = stdlib_documents(["shutil"])
    assert " at 0x7" not in shutil_page.text


# ---------------------------------------------------------------- progress per batch


def test_encode_reports_every_batch(make_embedder):
    embedder = make_embedder(max_length=128)
    texts = [f"text number {i} " * (1 + i % 4) for i in range(12)]
    calls: list[tuple[int, int]] = []
    embedder.encode(texts, batch_tokens=64, on_batch=lambda n, tokens: calls.append((n, tokens)))
    total = sum(len(e.ids) for e in embedder.tokenize(texts))
    assert len(calls) > 3 and calls[-1] == (12, total)
    assert all(a < b for (a, _), (b, _) in itertools.pairwise(calls))


def test_build_index_reports_per_batch_not_per_group(make_embedder, tmp_path):
    embedder = make_embedder(max_length=64, batch_tokens=64)
    documents = [SourceDocument(f"d{i}", f"t{i}", f"document {i} about retrieval " * 3, "x") for i in range(10)]
    calls: list[tuple[int, int, int]] = []
    report = build_index(embedder, documents, tmp_path / "idx", progress=lambda *a: calls.append(a))
    assert calls[0] == (0, 0, report.tokens)  # before the first batch: the amount of work
    assert len(calls) > 4  # one group (everything fits in 32,768 tokens), many batches
    assert calls[-1] == (10, report.tokens, report.tokens)
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)


def test_quiet_prints_only_results(checkpoints, tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(f"doc {i}\n\nsome text about topic {i}")
    model = str(checkpoints["llama"])
    assert main(["index", str(folder), "--out", str(tmp_path / "idx"), "--model", model, "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("indexed 3 documents")
    assert main(["index", str(folder), "--out", str(tmp_path / "idx2"), "--model", model]) == 0
    err = capsys.readouterr().err
    assert "loading model" in err and "indexing: " in err and "docs" in err  # stage messages and progress


def test_index_mismatch_names_overwrite_and_starts_no_progress(checkpoints, tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha\n\nthe first document")
    model, out = str(checkpoints["llama"]), str(tmp_path / "idx")
    assert main(["index", str(folder), "--out", out, "--model", model, "-q"]) == 0
    capsys.readouterr()
    assert main(["index", str(folder), "--out", out, "--model", model, "--method", "mean"]) == 1
    err = capsys.readouterr().err
    assert "different embedder" in err and "--overwrite" in err
    assert "indexing: " not in err  # refused before any progress line
    assert (
        main(["index", str(folder), "--out", out, "--model", model, "--method", "mean", "--overwrite", "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["embedded"] == 1 and report["embedder"]["method"] == "mean"
    assert main(["search", out, "first", "--json"]) == 0  # the rebuilt index loads with the new embedder


# ---------------------------------------------------------------- search output


def test_titles_are_cut_at_word_boundaries():
    from kvembed_rag.cli.output import shorten

    title = "json: JSON (JavaScript Object Notation) <https://json.org> is a subset of JavaScript syntax"
    cut = shorten(title, 60)
    assert len(cut) <= 60 and cut.endswith("…") and title.startswith(cut.removesuffix(" …"))
    assert cut.removesuffix(" …").split()[-1] in title.split()  # a whole word
    assert shorten("short title", 60) == "short title"
    assert shorten("x" * 100, 20) == "x" * 19 + "…"


def test_search_k_zero_is_refused_by_the_api(make_embedder, tmp_path):
    from kvembed_rag.retrieval.pipeline import search_documents
    from kvembed_rag.retrieval.vector_index import VectorIndex

    embedder = make_embedder()
    build_index(embedder, [SourceDocument("a", "A", "text", "x")], tmp_path / "idx")
    with pytest.raises(ValueError, match="k must be a positive int"):
        search_documents(VectorIndex.load(tmp_path / "idx"), embedder.encode_queries("q"), k=0)


# ---------------------------------------------------------------- plots


@pytest.fixture
def captured_figures(monkeypatch):
    pytest.importorskip("matplotlib")
    from kvembed_rag import plotting

    figures: list = []
    monkeypatch.setattr(plotting, "save", lambda fig, path: figures.append(fig))
    return figures


def test_sweep_plot_colours_gaps_legend_and_title(captured_figures):
    from kvembed_rag.eval.harness import EvalRow
    from kvembed_rag.plotting import METHOD_COLORS

    def row(method: str, length: int, score: float) -> EvalRow:
        return EvalRow("loco", "qmsum", "gemma-3-270m (default)", method, length, "ndcg@10", score, 10, 1.0, 10, False)

    rows = [row("kv", n, 0.5) for n in (512, 1024, 2048, 4096)] + [row("prompteol", n, 0.6) for n in (512, 4096)]
    from kvembed_rag.eval.harness import plot_length_sweep

    plot_length_sweep(rows, "unused.png")
    (fig,) = captured_figures
    axis = fig.axes[0]
    lines = {line.get_label(): line for line in axis.get_lines()}
    assert (
        lines["kv"].get_color() == METHOD_COLORS["kv"] and lines["prompteol"].get_color() == METHOD_COLORS["prompteol"]
    )
    y = np.asarray(lines["prompteol"].get_ydata(), dtype=float)
    assert np.isnan(y[1]) and np.isnan(y[2]) and not np.isnan(y[0])  # no line across 1,024 and 2,048
    legend = axis.get_legend()
    assert legend.get_bbox_to_anchor().x0 > axis.get_window_extent().x1 - 1  # right of the axes
    title = fig._suptitle.get_text()
    assert "Gemma-3-270M" in title and "QMSum" in title and "loco" in title


def test_id_plot_readable_ticks_and_model_title(captured_figures):
    from kvembed_rag.layer_selection import LayerSelection, plot_curve
    from kvembed_rag.plotting import layer_ticks, model_name

    selection = LayerSelection(curve=[float(i % 7) + 10 for i in range(30)], layers=[29], num_layers=30,
                               normalized=True, n_texts=222)  # fmt: skip
    plot_curve(selection, "unused.png", title=f"{model_name('smollm2')}: TwoNN ID")
    (fig,) = captured_figures
    axis = fig.axes[0]
    assert list(axis.get_xticks()) == layer_ticks(30) == list(range(0, 30, 2))
    assert axis.get_title().startswith("SmolLM2-135M-Instruct")
    assert layer_ticks(18) == list(range(18))


def test_bench_plot_uses_the_shared_palette(captured_figures):
    from kvembed_rag.eval.throughput import BenchRow, plot_rows
    from kvembed_rag.plotting import METHOD_COLORS

    rows = [BenchRow(m, n, 2, 100.0, 1.0, 10.0, 1.0) for m in ("plain", "kv", "echo") for n in (128, 512)]
    plot_rows(rows, "unused.png", "t")
    (fig,) = captured_figures
    colours = {line.get_label(): line.get_color() for line in fig.axes[0].get_lines()}
    assert colours == {m: METHOD_COLORS[m] for m in ("plain", "kv", "echo")}


def test_library_bars_hidden_by_default_and_shown_with_verbose(checkpoints, tmp_path):
    env = {**__import__("os").environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'integrations'}", "KVEMBED_CACHE": str(tmp_path)}
    for key in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
        env.pop(key, None)
    base = [sys.executable, "-m", "kvembed_rag", "embed", "--model", str(checkpoints["llama"]), "--text", "hello"]
    runs = {}
    for name, extra in (("default", []), ("verbose", ["-v"]), ("quiet", ["-q"])):
        result = subprocess.run([*base, *extra], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = result
    assert "Loading weights" not in runs["default"].stderr and "loading model" in runs["default"].stderr
    assert "Loading weights" in runs["verbose"].stderr
    assert runs["quiet"].stderr == "" and "dim=64" in runs["quiet"].stdout
