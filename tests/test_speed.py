"""Issue 17: dtype="auto" from the detected hardware, the banded CPU kernel, the merged-slot
check with its fallback, model_kwargs, and the dtype benchmark's bookkeeping (numbers are not asserted)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from dtype_tolerances import KERNEL_TOLERANCE

from kvembed_rag import KVEmbedder, attention, hardware
from kvembed_rag.artifacts import artifact_path
from kvembed_rag.cli import main
from kvembed_rag.errors import MergedSlotFallbackWarning
from kvembed_rag.eval.throughput import linear_weights, matmul_flops_per_token
from kvembed_rag.loading import pick_dtype

TEXTS = ["fox", "The quick brown fox jumps over the lazy dog.", "", "Key and value states are re-routed."]


def _features(bf16: bool) -> hardware.CpuFeatures:
    return hardware.CpuFeatures(bf16, False, True, True, False, source="test")


@pytest.fixture
def unpinned(monkeypatch):
    """dtype='auto' as a user gets it (the suite pins it to float32 in conftest)."""
    monkeypatch.delenv(hardware.AUTO_DTYPE_ENV, raising=False)
    return monkeypatch


def test_cpuinfo_flags_are_parsed():
    text = (
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n\nflags : amx_bf16\n"
    )
    found = hardware.parse_cpuinfo(text)
    assert (found.avx512_bf16, found.amx_bf16, found.avx512_vnni, found.avx_vnni) == (True, False, True, False)
    assert found.native_bf16 and found.vnni and found.cpu_name == "Some CPU" and found.source == "cpuinfo"
    assert not hardware.parse_cpuinfo("flags : avx2 fma\n").native_bf16


def test_detection_reports_this_machine():
    found = hardware.cpu_features()
    assert found.source in ("torch", "cpuinfo", "none")
    line = hardware.hardware_line(hardware.describe_hardware("cpu"))
    assert "bf16" in line and "vnni" in line and "auto dtype -> float32" in line  # pinned by conftest


def test_auto_picks_bfloat16_only_with_native_bf16_that_is_faster(unpinned):
    cpu = torch.device("cpu")
    unpinned.setattr(hardware, "cpu_features", lambda: _features(True))
    unpinned.setattr(hardware, "measured_bf16_speedup", lambda features: 2.5)
    assert hardware.resolve_dtype("auto", cpu) == torch.bfloat16
    assert pick_dtype(None, cpu) == torch.bfloat16
    assert "2.50x" in hardware.auto_dtype(cpu)[1]
    unpinned.setattr(hardware, "measured_bf16_speedup", lambda features: 0.6)  # a VM hiding AMX, say
    assert hardware.resolve_dtype("auto", cpu) == torch.float32
    assert "only 0.60x" in hardware.auto_dtype(cpu)[1]

    def never(features):
        raise AssertionError("no bf16 flag: nothing to time")

    unpinned.setattr(hardware, "cpu_features", lambda: _features(False))
    unpinned.setattr(hardware, "measured_bf16_speedup", never)
    assert hardware.resolve_dtype("auto", cpu) == torch.float32
    assert hardware.resolve_dtype("auto", "cuda") == torch.bfloat16  # no device needed to decide
    unpinned.setenv(hardware.AUTO_DTYPE_ENV, "bf16")
    assert hardware.resolve_dtype(None, cpu) == torch.bfloat16


def test_explicit_dtype_names_still_work():
    cpu = torch.device("cpu")
    assert pick_dtype("bf16", cpu) == torch.bfloat16 and pick_dtype("FLOAT32", cpu) == torch.float32
    assert pick_dtype(torch.float16, cpu) == torch.float16
    with pytest.raises(ValueError, match="dtype must be 'auto'"):
        pick_dtype("float8", cpu)


def test_bf16_verdict_is_measured_once_and_cached(unpinned):
    calls = []
    unpinned.setattr(hardware, "bf16_speedup", lambda rounds=5: calls.append(1) or 1.7)
    features = _features(True)
    assert hardware.measured_bf16_speedup(features) == 1.7
    assert hardware.measured_bf16_speedup(features) == 1.7
    assert len(calls) == 1 and artifact_path("hardware", hardware._verdict_key(features), ".json").is_file()


def test_from_pretrained_defaults_to_auto(checkpoints, unpinned):
    unpinned.setattr(hardware, "cpu_features", lambda: _features(True))
    unpinned.setattr(hardware, "measured_bf16_speedup", lambda features: 2.0)
    fast = KVEmbedder.from_pretrained(str(checkpoints["llama"]), layers=[2])
    assert fast.describe()["dtype"] == "bfloat16"
    vectors = fast.encode(TEXTS)
    assert vectors.dtype == np.float32 and np.isfinite(vectors).all()
    unpinned.setattr(hardware, "cpu_features", lambda: _features(False))
    assert KVEmbedder.from_pretrained(str(checkpoints["llama"]), layers=[2]).describe()["dtype"] == "float32"


def test_model_kwargs_reach_transformers(checkpoints):
    embedder = KVEmbedder.from_pretrained(
        str(checkpoints["qwen3"]), layers=[2], model_kwargs={"low_cpu_mem_usage": True}
    )
    assert embedder.encode("fox").shape == (embedder.dim,)
    with pytest.raises(ValueError, match="model_kwargs may not set"):
        KVEmbedder.from_pretrained(str(checkpoints["qwen3"]), model_kwargs={"dtype": torch.float16})


@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_banded_kernel_on_long_padded_inputs_equals_eager(make_embedder, arch, side):
    """Inputs over 2 x BAND_CHUNK tokens, padded: sliding (window 24) and full layers run block by block."""
    long_text = " ".join(["The quick brown fox jumps over the lazy dog."] * 28)
    texts = [long_text, long_text[: len(long_text) // 2], "fox"]
    fast = make_embedder(arch, layers=[2, 3], padding_side=side, max_length=1024)
    assert len(fast.tokenize([long_text])[0].ids) > 2 * attention.BAND_CHUNK
    eager = make_embedder(arch, layers=[2, 3], padding_side=side, max_length=1024, attn_implementation="eager")
    np.testing.assert_allclose(fast.encode(texts), eager.encode(texts), atol=2e-5)
    alone = np.stack([fast.encode(t) for t in texts])
    np.testing.assert_allclose(fast.encode(texts), alone, atol=2e-5)


def test_banded_refuses_masks_that_are_not_a_causal_band():
    causal = torch.tril(torch.ones(8, 8, dtype=torch.bool))[None, None]
    assert attention._banded(causal, 8, None)
    assert not attention._banded(torch.ones(1, 1, 8, 8, dtype=torch.bool), 8, None)  # bidirectional
    assert not attention._banded(causal, 8, 3)  # wider than the stated window
    band = causal & ~torch.tril(torch.ones(8, 8, dtype=torch.bool), diagonal=-3)[None, None]
    assert attention._banded(band, 8, 3)


def test_merged_slot_check_passes_for_the_real_kernel(make_embedder, monkeypatch):
    monkeypatch.setattr(attention, "MERGE_VERDICTS", {})
    embedder = make_embedder("gemma3", layers=[2])
    assert attention.check_merged_slot_kernel(embedder.model) is True
    assert attention.MERGE_VERDICTS[("cpu", torch.float32)] is True


def test_merged_slot_check_falls_back_when_the_kernel_disagrees(make_embedder, monkeypatch):
    monkeypatch.setattr(attention, "MERGE_VERDICTS", {})
    embedder = make_embedder("qwen3", layers=[2, 3])
    expected = embedder.encode(TEXTS)

    def wrong(query, key, value, allowed, scale, window):
        out, lse = attention._cpu_flash_with_lse(query, key, value, allowed, scale, window)
        return out + 0.01, lse  # a kernel that is off by 1e-2

    with pytest.warns(MergedSlotFallbackWarning, match="explicit-mask path"):
        assert attention.check_merged_slot_kernel(embedder.model, kernel=wrong) is False
    assert attention.MERGE_VERDICTS[("cpu", torch.float32)] is False
    calls = []
    monkeypatch.setattr(attention, "_cpu_flash_with_lse", lambda *a: calls.append(1))
    np.testing.assert_allclose(embedder.encode(TEXTS), expected, atol=1e-5)  # the explicit path, same vectors
    assert not calls


def test_merged_slot_check_tolerates_half_precision_rounding(make_embedder, monkeypatch):
    monkeypatch.setattr(attention, "MERGE_VERDICTS", {})
    model = make_embedder("llama", layers=[2]).model
    bf16 = type(model)(model.config).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MergedSlotFallbackWarning)
        assert attention.check_merged_slot_kernel(bf16) is True


def test_flops_formula_counts_linear_weights_and_visible_keys(make_embedder):
    model = make_embedder("mistral", layers=[2]).model  # 6 layers, window 24, hidden 64, 4 heads of 16
    weights = linear_weights(model)
    assert weights == 6 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128)
    per_token = matmul_flops_per_token(model, 8)
    assert per_token == pytest.approx(2 * weights + 6 * 4 * 4 * 16 * 4.5)  # causal: mean of 1..8 keys
    mean_keys = (sum(range(1, 25)) + 24 * 76) / 100  # window 24 over 100 tokens
    assert matmul_flops_per_token(model, 100) == pytest.approx(2 * weights + 6 * 4 * 4 * 16 * mean_keys)


def test_bench_runs_several_dtypes_in_one_process(checkpoints, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", "--model", str(checkpoints["llama"]), "--lengths", "16,32", "--methods", "kv"]
    argv += ["--dtypes", "float32,bfloat16", "--repeats", "1", "--batch-tokens", "64"]
    assert main([*argv, "--json", str(out), "--plot", str(png)]) == 0
    payload = json.loads(out.read_text())
    assert [(r["length"], r["dtype"], r["method"]) for r in payload["rows"]] == [
        (n, d, m) for n in (16, 32) for d in ("float32", "bfloat16") for m in ("plain", "kv")
    ]
    assert set(payload["meta"]["matmul_peak_gflops"]) == {"float32", "bfloat16"}
    # tiny models do little work: the rounded JSON values may read 0.0, but they are always filled in
    assert all(r["gflops"] >= 0 and r["peak_fraction"] is not None and r["peak_fraction"] >= 0 for r in payload["rows"])
    assert png.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "matmul peak" in printed and "of peak" in printed and "hardware: bf16" in printed


def test_info_prints_the_hardware_line(checkpoints, capsys):
    assert main(["info", "--model", str(checkpoints["llama"]), "--layers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "hardware" in printed and "auto dtype -> float32" in printed and "dtype" in printed


def _script(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_check_stands_alone_and_exits_cleanly_without_a_gpu(monkeypatch, capsys):
    cuda_check = _script("cuda_check")
    assert "tiny_models" not in (Path(cuda_check.__file__).read_text())  # no import from tests/
    tokenizer = cuda_check.word_tokenizer()
    ids = tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"]
    assert len(set(ids)) == 4 and tokenizer.unk_token_id not in ids  # distinct ids: a real batched-vs-alone check
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["cuda_check.py"])
    assert cuda_check.main() == 0
    assert "no CUDA device" in capsys.readouterr().out


class _Layer(torch.nn.Module):
    """What the attention functions read from a decoder layer's attention module."""

    def __init__(self, layer_idx: int, head_dim: int, groups: int) -> None:
        super().__init__()
        self.layer_idx, self.head_dim, self.num_key_value_groups = layer_idx, head_dim, groups


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("reroute", [False, True])
def test_an_unpadded_input_inside_its_window_runs_causal_without_a_mask(dtype, reroute, monkeypatch):
    """600 tokens under a 1,024-token window, no padding (a sliding layer's mask is then plain causal): the
    causal kernel runs with no mask built, and gives what the masked block path and the eager reference give."""
    torch.manual_seed(0)
    tokens, heads, dim = 600, 4, 16
    q = torch.randn(1, heads, tokens, dim).to(getattr(torch, dtype))
    k, v = (torch.randn(1, 1, tokens, dim).to(q.dtype) for _ in range(2))  # one KV head: GQA
    layer = _Layer(3, dim, heads)
    plan = attention.build_plan(torch.ones(1, tokens, dtype=torch.long), layers=[3] if reroute else [], bias=1.0)
    assert not plan.padded
    causal = torch.tril(torch.ones(tokens, tokens, dtype=torch.bool))[None, None]
    built = []
    original = attention._additive_mask
    monkeypatch.setattr(attention, "_additive_mask", lambda *a, **kw: built.append(1) or original(*a, **kw))
    fast, _ = attention.kv_sdpa_attention_forward(layer, q, k, v, causal, kv_plan=plan, sliding_window=1024)
    assert not built  # no float mask materialised
    plan.padded = True  # as if another row were padded: the masked block path
    masked, _ = attention.kv_sdpa_attention_forward(layer, q, k, v, causal, kv_plan=plan, sliding_window=1024)
    assert built
    reference, _ = attention.kv_eager_attention_forward(layer, q, k, v, causal, kv_plan=plan, sliding_window=1024)
    tolerance = KERNEL_TOLERANCE[dtype]
    torch.testing.assert_close(fast.float(), masked.float(), atol=tolerance, rtol=0)
    torch.testing.assert_close(fast.float(), reference.float(), atol=tolerance, rtol=0)
