"""Throughput and memory of each method against the bare forward pass, in one process and one run.

``plain`` is the same model's stock forward pass (transformers' own SDPA path) over the same batch; every
other method runs through :class:`KVEmbedder` on synthetic token ids of the requested length, so the
numbers measure the model, not the tokenizer. Throughput counts *text* tokens per second: echo feeds each
text twice, so it does twice the work per text token. Peak memory is CUDA's allocator peak on GPUs and the
resident set's peak (sampled) on CPUs, both above the level before the run.

Against the hardware: :func:`run_dtype_benchmark` runs several dtypes (``float32``, ``bfloat16``, ``int8``
weights) in one process, interleaved per length, and every row carries the model's *useful* matmul FLOP/s
and its fraction of the machine's matmul peak in that dtype (:func:`kvembed_rag.hardware.matmul_flops`, a
2048x640 by 640x2048 product). FLOPs per processed token (:func:`matmul_flops_per_token`)::

    2 * (weights of every Linear layer)                           # projections and MLP, the bulk
    + sum over layers of 4 * heads * head_dim * mean visible keys  # q.k and p.v

where the mean visible keys of a causal layer over ``T`` tokens is ``(T + 1) / 2`` and of a sliding layer
of window ``W`` is ``mean(min(i + 1, W))``: the work the method needs, not what a kernel happens to do
(an explicit-mask kernel that computes all ``T`` keys does not get credit for the masked ones). Embedding
lookups, norms, rotary phases and softmax are not counted (memory-bound, not matmuls).
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

from ..tokenization import EncodedText, hierarchical_markers

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
    dtype: str = ""
    gflops: float | None = None  # useful matmul GFLOP/s (see the module docstring)
    peak_fraction: float | None = None  # gflops over the machine's matmul peak in this dtype

    def to_dict(self) -> dict[str, Any]:
        # four significant digits: a tiny model's fraction of the peak must not round to zero
        return {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in self.__dict__.items()}


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


def synthetic_input(length: int, vocab: int, echo: bool, seed: int) -> EncodedText:
    generator = torch.Generator().manual_seed(seed)
    if echo:  # the text twice (the method's cost), pooled over the second half
        half = torch.randint(10, vocab, (length,), generator=generator).tolist()
        return EncodedText([2, *half, *half], length + 1, 2 * length + 1, 1, text_end=length + 1)
    ids = torch.randint(10, vocab, (length - 1,), generator=generator).tolist()
    return EncodedText([2, *ids], 1, length, 1, text_end=length)


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


def measure(run: Any, device: torch.device, repeats: int) -> tuple[float, float]:
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


def linear_weights(model: torch.nn.Module) -> int:
    """Multiply-accumulates per token in the model's Linear layers (float or int8 dynamic ones)."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "DynamicQuantizedLinear":
            layer: Any = module  # int8 layers keep in_features/out_features as plain ints
            total += int(layer.in_features) * int(layer.out_features)
    return total


def matmul_flops_per_token(model: torch.nn.Module, length: int) -> float:
    """Useful matmul FLOPs per token of a ``length``-token sequence (formula in the module docstring)."""
    config: Any = model.config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    window = getattr(config, "sliding_window", None)
    # Gemma-style configs list each layer's kind; Mistral-style ones put every layer in the window when it is set
    default_kind = "sliding_attention" if window else "full_attention"
    types = list(getattr(config, "layer_types", None) or [default_kind] * int(config.num_hidden_layers))
    positions = torch.arange(1, length + 1, dtype=torch.float64)
    causal = float(positions.mean())
    banded = float(positions.clamp(max=window).mean()) if window else causal
    keys = sum(banded if kind == "sliding_attention" else causal for kind in types)
    return 2.0 * linear_weights(model) + 4.0 * heads * head_dim * keys


def _bench_length(embedders: dict[str, Any], length: int, batch_tokens: int, repeats: int) -> list[BenchRow]:
    """``plain`` then every method at one length (one model, one dtype)."""
    first = next(iter(embedders.values()))
    model, device = first.model, first.device
    vocab = int(model.config.vocab_size)
    batch = max(1, batch_tokens // length)
    texts = [synthetic_input(length, vocab, False, seed) for seed in range(batch)]
    ids, mask, _ = first.collate(texts)
    ids, mask = ids.to(device), mask.to(device)

    def plain(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> None:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask)

    dtype = str(first.dtype).removeprefix("torch.")
    seconds, peak = measure(plain, device, repeats)
    plain_rate = batch * length / seconds
    flops = matmul_flops_per_token(model, length) * batch * length
    rows = [BenchRow("plain", length, batch, plain_rate, 1.0, peak, seconds, dtype, flops / seconds / 1e9)]
    for name, embedder in embedders.items():
        items = [synthetic_input(length, vocab, embedder.spec.pool_last_copy, seed) for seed in range(batch)]
        embedder.insert_placeholder(items)
        if embedder.spec.hierarchical_prepending:  # HTP: a sentence every 24 tokens, as in prose (its markers cost)
            ends = [(i + 1) % 24 == 0 for i in range(length - 1)]
            items = [hierarchical_markers(item, ends, 0) for item in items]
        seconds, peak = measure(lambda e=embedder, b=items: e.embed_encoded(b), device, repeats)
        rate = batch * length / seconds
        work = sum(matmul_flops_per_token(model, len(item.ids)) * len(item.ids) for item in items)
        rows.append(BenchRow(name, length, batch, rate, rate / plain_rate, peak, seconds, dtype, work / seconds / 1e9))
    return rows


def run_benchmark(
    embedders: dict[str, Any],
    lengths: list[int],
    *,
    batch_tokens: int = 16_384,
    repeats: int = 3,
) -> list[BenchRow]:
    """``embedders`` maps method names to KVEmbedders sharing one model; ``plain`` is added automatically."""
    return [row for length in lengths for row in _bench_length(embedders, length, batch_tokens, repeats)]


def measure_peaks(labels: list[str], device: torch.device, seconds: float = 0.5) -> dict[str, float]:
    """Matmul GFLOP/s per dtype label (``float32``, ``bfloat16``, ``int8`` ...), interleaved, best of two rounds.

    The best, not the median: on a shared machine the highest rate seen is the closest to what it can do.
    """
    from ..hardware import matmul_flops

    peaks: dict[str, float] = {}
    for _ in range(2):
        for label in labels:
            rate = matmul_flops(label, device, seconds=seconds / 2) / 1e9
            peaks[label] = max(peaks.get(label, 0.0), rate)
    return peaks


def run_dtype_benchmark(
    groups: dict[str, dict[str, Any]],
    lengths: list[int],
    *,
    batch_tokens: int = 16_384,
    repeats: int = 3,
    peaks: dict[str, float] | None = None,
) -> list[BenchRow]:
    """Every dtype group (label -> method embedders over one model) at every length, interleaved per length,
    so that the dtypes' ratios come from the same minutes of a shared machine. ``peaks`` (GFLOP/s per label)
    fill in each row's fraction of the matmul peak."""
    rows: list[BenchRow] = []
    for length in lengths:
        for label, embedders in groups.items():
            for row in _bench_length(embedders, length, batch_tokens, repeats):
                row.dtype = label
                if peaks and label in peaks and row.gflops is not None:
                    row.peak_fraction = row.gflops / peaks[label]
                rows.append(row)
    return rows


def plot_dtype_rows(rows: list[BenchRow], path: str, title: str) -> None:
    """tokens/s and fraction of the matmul peak against length, one line per dtype x method."""
    from ..plotting import legend_outside, method_color, pyplot, save

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    styles = ("-", "--", ":", "-.")
    dashes = {dtype: styles[i % len(styles)] for i, dtype in enumerate(dict.fromkeys(r.dtype for r in rows))}
    for key in dict.fromkeys((r.dtype, r.method) for r in rows):
        mine = [r for r in rows if (r.dtype, r.method) == key]
        # colour: the method (as in every figure); line style: the dtype
        look = {
            "color": method_color(key[1]),
            "linestyle": dashes[key[0]],
            "marker": "o",
            "label": f"{key[1]} {key[0]}",
        }
        left.plot([r.length for r in mine], [r.tokens_per_s for r in mine], **look)
        right.plot([r.length for r in mine], [r.peak_fraction or 0 for r in mine], **look)
    for axis, label in ((left, "text tokens / s"), (right, "useful matmul FLOP/s / matmul peak (same dtype)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("tokens per text")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    legend_outside(right)
    fig.suptitle(title)
    save(fig, path)


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
