"""Throughput and memory of each method against the bare forward pass, in one process and one run.

``plain`` is the same model's stock forward pass (transformers' own SDPA path) over the same batch; every
other method runs through :class:`KVEmbedder` on synthetic token ids of the requested length, so the
numbers measure the model, not the tokenizer. Throughput counts *text* tokens per second: echo feeds each
text twice, so it does twice the work per text token. Peak memory is CUDA's allocator peak on GPUs and the
resident set's peak (sampled) on CPUs, both above the level before the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..tokenization import EncodedText

#: shapes of the paper's backbones, for randomly initialised benchmark models (no download needed)
PAPER_SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-4b": dict(
        model_type="qwen3",
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        max_position_embeddings=32768,
    ),
    "mistral-7b": dict(
        model_type="mistral",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=32768,
        sliding_window=None,
    ),
    "llama-3.1-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
    ),
}


@dataclass
class BenchRow:
    method: str
    length: int
    batch: int
    tokens_per_s: float
    ratio_to_plain: float | None
    peak_mb: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class _RssSampler:
    """Peak resident set size above a baseline, sampled every few milliseconds (CPU runs)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def random_model(shape: str, *, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised base model of a paper backbone's shape, with the kvembed attention backend."""
    from transformers import AutoConfig, AutoModel

    from ..attention import ATTN_SDPA

    spec = dict(PAPER_SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config._attn_implementation = ATTN_SDPA
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=dtype, attn_implementation=ATTN_SDPA)
    return model.eval()


def _synthetic(length: int, vocab: int, echo: bool, seed: int) -> EncodedText:
    generator = torch.Generator().manual_seed(seed)
    if echo:  # the text twice (the method's cost), pooled over the second half
        half = torch.randint(10, vocab, (length,), generator=generator).tolist()
        return EncodedText([2, *half, *half], length + 1, 2 * length + 1, 1)
    ids = torch.randint(10, vocab, (length - 1,), generator=generator).tolist()
    return EncodedText([2, *ids], 1, length, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release_freed_memory() -> None:
    """Hand memory that the allocator keeps after ``free`` back to the OS (glibc ``malloc_trim``), so the next
    measurement's resident-set baseline does not include the previous one's leftovers."""
    gc.collect()
    # not glibc (OSError/AttributeError): the baseline may then be high and the peak understated
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _measure(run: Any, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median seconds of ``repeats`` runs after one warm-up, and the peak memory (MB) above the start."""
    run()
    _sync(device)
    if device.type == "cpu":
        _release_freed_memory()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            _sync(device)
            times.append(time.perf_counter() - start)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        with _RssSampler() as sampler:
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
        peak = (sampler.peak - sampler.base) / 2**20
    return statistics.median(times), peak


def run_benchmark(
    embedders: dict[str, Any],
    lengths: list[int],
    *,
    batch_tokens: int = 16_384,
    repeats: int = 3,
) -> list[BenchRow]:
    """``embedders`` maps method names to KVEmbedders sharing one model; ``plain`` is added automatically."""
    first = next(iter(embedders.values()))
    model, device = first.model, first.device
    vocab = int(model.config.vocab_size)
    rows: list[BenchRow] = []
    for length in lengths:
        batch = max(1, batch_tokens // length)
        texts = [_synthetic(length, vocab, False, seed) for seed in range(batch)]
        ids, mask, _ = first.collate(texts)
        ids, mask = ids.to(device), mask.to(device)

        def plain(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> None:
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask)

        seconds, peak = _measure(plain, device, repeats)
        plain_rate = batch * length / seconds
        rows.append(BenchRow("plain", length, batch, plain_rate, 1.0, peak, seconds))
        for name, embedder in embedders.items():
            items = [_synthetic(length, vocab, embedder.spec.pool_last_copy, seed) for seed in range(batch)]
            embedder.insert_placeholder(items)
            seconds, peak = _measure(lambda e=embedder, b=items: e.embed_encoded(b), device, repeats)
            rate = batch * length / seconds
            rows.append(BenchRow(name, length, batch, rate, rate / plain_rate, peak, seconds))
    return rows


def check_targets(rows: list[BenchRow]) -> list[dict[str, Any]]:
    """The issue's targets, reported (never asserted): kv >= 0.95x plain tokens/s at every length, echo <= 0.6x
    kv, kv peak memory <= 1.2x plain at the longest length."""
    by = {(r.method, r.length): r for r in rows}
    lengths = sorted({r.length for r in rows})
    checks: list[dict[str, Any]] = []
    for length in lengths:
        kv, plain, echo = by.get(("kv", length)), by.get(("plain", length)), by.get(("echo", length))
        if kv and plain:
            value = kv.tokens_per_s / plain.tokens_per_s
            checks.append(
                {"target": "kv >= 0.95x plain tokens/s", "length": length, "value": value, "ok": value >= 0.95}
            )
        if kv and echo:
            value = echo.tokens_per_s / kv.tokens_per_s
            checks.append({"target": "echo <= 0.6x kv tokens/s", "length": length, "value": value, "ok": value <= 0.6})
    longest = lengths[-1] if lengths else None
    kv, plain = by.get(("kv", longest or 0)), by.get(("plain", longest or 0))
    if kv and plain and plain.peak_mb > 0:
        value = kv.peak_mb / plain.peak_mb
        checks.append({"target": "kv peak <= 1.2x plain", "length": longest, "value": value, "ok": value <= 1.2})
    return checks


def plot_rows(rows: list[BenchRow], path: str, title: str) -> None:
    """Tokens/s and peak memory against length, one colour per method (shared with every other figure)."""
    from ..plotting import legend_outside, method_color, method_order, pyplot, save

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    lengths = sorted({r.length for r in rows})
    for method in method_order(r.method for r in rows):
        mine = {r.length: r for r in rows if r.method == method}
        nan = float("nan")
        for axis, value in ((left, "tokens_per_s"), (right, "peak_mb")):
            axis.plot(
                lengths,
                [getattr(mine[n], value) if n in mine else nan for n in lengths],
                marker="o",
                color=method_color(method),
                label=method,
            )
    for axis, label in ((left, "text tokens / s"), (right, "peak memory above start (MB)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(lengths, [f"{n:,}" for n in lengths])
        axis.minorticks_off()
        axis.set_xlabel("tokens per text")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    legend_outside(right)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


def placeholder_tokenizer() -> Any:
    """A word-level tokenizer for benchmark models with random weights (prompts must still tokenize)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<bos>", "<eos>"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )
