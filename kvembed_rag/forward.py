"""``Forward``: a loaded backbone run over a resolved configuration, to raw (not post-processed) vectors.

The one forward function of the package: :class:`~kvembed_rag.KVEmbedder` encodes through it, and resolution
(``layers="id"``'s calibration pass, fitting post-processing statistics) runs it directly, so that no embedder is
built to construct another. The encode loop follows sentence-transformers': inputs sorted by length (longest first),
batches sized in padded tokens, order restored; an out-of-memory batch is split in halves down to one text.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from . import __version__
from .attention import PLAN_KWARG, build_plan
from .config import ResolvedConfig
from .errors import EmbeddingMemoryError, TruncationWarning
from .loading import ModelSource
from .methods import MethodSpec, get_method, token_prepending_layers
from .pooling import pool
from .prompts import Role
from .tokenization import EncodedText, PromptTooLongError, encode_text, hierarchical_markers, sentence_end_token

logger = logging.getLogger(__name__)


class Forward:
    """``model`` + ``tokenizer`` + a :class:`~kvembed_rag.config.ResolvedConfig`: prompted, batched forward passes.

    Cheap to build (nothing is loaded or computed). Thread-safe: one lock per backbone guards the tokenizer and
    the model, shared with every other ``Forward`` over the same backbone.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, resolved: ResolvedConfig, source: ModelSource) -> None:
        self.model: Any = model  # a transformers PreTrainedModel (typed loosely: its config is dynamic)
        self.tokenizer = tokenizer
        self.resolved = resolved
        self.source = source
        model_config: Any = getattr(model, "config", None)
        self.num_layers = int(model_config.num_hidden_layers)
        self.spec: MethodSpec = get_method(resolved.method)
        self.pad_id = _pad_id(tokenizer)
        self.token_prepending_layers = (
            token_prepending_layers(self.num_layers)
            if self.spec.token_prepending or self.spec.hierarchical_prepending
            else []
        )
        self._placeholder_id = next(
            (v for v in (getattr(tokenizer, "unk_token_id", None), self.pad_id) if isinstance(v, int)), 0
        )
        self._decoder = _decoder_layers(model, self.num_layers)
        self.lock = backbone_lock(model)

    @property
    def method(self) -> str:
        return self.resolved.method

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        first = next(self.model.parameters(), None)
        return first.dtype if first is not None else torch.float32

    def describe(self) -> dict[str, Any]:
        """What determines the raw vectors, JSON-serialisable (``KVEmbedder.describe`` adds post-processing)."""
        config: Any = self.model.config
        reroute = self.spec.reroute
        return {
            "package": "kvembed-rag",
            "version": __version__,
            "model": self.source.to_dict(),
            "architecture": type(self.model).__name__,
            "model_type": getattr(config, "model_type", None),
            "num_layers": self.num_layers,
            "dim": self.hidden_size,
            "dtype": str(self.dtype).removeprefix("torch."),
            "method": self.method,
            "layers": list(self.resolved.layers) if reroute else [],
            "bias": self.resolved.bias if reroute else None,
            "token_prepending_layers": list(self.token_prepending_layers),
            "pooling": self.resolved.pooling,
            "prompts": self.resolved.prompts.to_dict(),
            "max_length": self.resolved.max_length,
            "postprocess": None,
            "provenance": dict(self.resolved.provenance),
            "config": self.resolved.config.portable().to_dict(),
            "batch_invariance": batch_invariance(self.dtype),
        }

    # ------------------------------------------------------------------ tokenization
    def tokenize(self, texts: Sequence[str], role: Role = "document") -> list[EncodedText]:
        """Prompted, truncated token ids per text (what :meth:`encode` feeds the model)."""
        if self.spec.hierarchical_prepending:
            with self.lock:
                return [self._hierarchical(text, role) for text in texts]
        reserve = 1 if self.spec.token_prepending else 0
        with self.lock:  # fast tokenizers are not thread-safe ("Already borrowed")
            encoded = [
                encode_text(
                    self.tokenizer,
                    text,
                    self.resolved.prompts,
                    role,
                    self.resolved.max_length,
                    pool_last_copy=self.spec.pool_last_copy,
                    reserve=reserve,
                )
                for text in texts
            ]
        return self.insert_placeholder(encoded) if reserve else encoded

    def _hierarchical(self, text: str, role: Role) -> EncodedText:
        """HTP's input for one text, its markers counted in ``max_length`` (the text's tail is cut to make room)."""
        reserve = 0
        for _ in range(16):
            item = encode_text(
                self.tokenizer, text, self.resolved.prompts, role, self.resolved.max_length, reserve=reserve
            )
            tokens = self.tokenizer.convert_ids_to_tokens(item.ids[item.text_start : item.text_end])
            ends = [sentence_end_token(str(t)) for t in tokens]
            sentences = sum(ends[:-1]) + 1 if ends else 0
            if len(item.ids) + 2 * sentences <= self.resolved.max_length:
                return hierarchical_markers(item, ends, self._placeholder_id)
            reserve = max(reserve + 1, 2 * sentences)
        raise PromptTooLongError(f"could not fit HTP's markers into max_length={self.resolved.max_length} tokens")

    def insert_placeholder(self, encoded: list[EncodedText]) -> list[EncodedText]:
        """Token-prepending: put the placeholder token before each text (in place; other methods: unchanged)."""
        if self.spec.token_prepending:
            for item in encoded:
                item.ids.insert(item.text_start, self._placeholder_id)
                item.pool_end += 1
                item.text_end = item.text_end + 1 if item.text_end >= 0 else item.text_end
                item.copies = [(item.text_start, len(item.ids) - 1)]  # the placeholder gets the last token's state
        return encoded

    def sentence_ends(self, text: str) -> list[bool] | None:
        """HTP (the only method whose input grows with the text's sentences): whether each token of ``text`` alone
        ends a sentence, each sentence costing two marker tokens; ``None`` for every other method."""
        if not self.spec.hierarchical_prepending:
            return None
        with self.lock:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return [sentence_end_token(str(t)) for t in self.tokenizer.convert_ids_to_tokens(ids)]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of ``text`` alone (no prompt, no special tokens)."""
        with self.lock:
            encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in encoding["offset_mapping"]]

    def collate(self, batch: list[EncodedText]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, T)`` ids, ``(B, T)`` padding mask and ``(B, T)`` pooling mask, padded on ``padding_side``."""
        width = max(len(e.ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        pool_mask = torch.zeros((len(batch), width), dtype=torch.bool)
        left = self.resolved.padding_side == "left"
        for row, item in enumerate(batch):
            offset = width - len(item.ids) if left else 0
            ids[row, offset : offset + len(item.ids)] = torch.tensor(item.ids, dtype=torch.long)
            mask[row, offset : offset + len(item.ids)] = 1
            pool_mask[row, offset + item.pool_start : offset + item.pool_end] = True
            if item.pool_skip:
                pool_mask[row, [offset + i for i in item.pool_skip]] = False
        return ids, mask, pool_mask

    # ------------------------------------------------------------------ the encode loop
    def encode(
        self,
        texts: Sequence[str],
        role: Role = "document",
        *,
        batch_tokens: int | None = None,
        show_progress: bool | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """``(n, hidden)`` float32 unit rows before post-processing, in input order."""
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.hidden_size), dtype=np.float32)
        encoded = self.tokenize(texts, role)
        self._warn_truncation(encoded)
        # longest first (as sentence-transformers does): the first batch shows the peak memory at once
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
        out = np.empty((len(encoded), self.hidden_size), dtype=np.float32)  # (n, H) unit rows
        progress = self._progress(len(encoded), show_progress)
        texts_done = tokens_done = 0
        lengths = [len(e.ids) for e in encoded]
        for batch in token_batches(order, lengths, batch_tokens or self.resolved.batch_tokens):
            out[batch] = self._forward_splitting(batch, encoded)
            if progress is not None:
                progress.update(len(batch))
            if on_batch is not None:
                texts_done += len(batch)
                tokens_done += sum(lengths[i] for i in batch)
                on_batch(texts_done, tokens_done)
        if progress is not None:
            progress.close()
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:
            raise FloatingPointError(
                f"non-finite embeddings for inputs {bad[:10].tolist()}: the backbone overflowed in {self.dtype}; "
                "try dtype='float32'"
            )
        return out

    def _forward_splitting(self, batch: list[int], encoded: list[EncodedText]) -> np.ndarray:
        """Forward a batch; on out-of-memory, halve it and retry, down to one text, then name that text."""
        try:
            return self.embed_encoded([encoded[i] for i in batch])
        except (MemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc):
                raise
            _release_memory(self.device)
            if len(batch) == 1:
                raise EmbeddingMemoryError(
                    f"out of memory embedding texts[{batch[0]}] ({len(encoded[batch[0]].ids)} tokens) even on its own "
                    f"on {self.device} in {self.dtype}; lower max_length, use dtype='bfloat16', or another device"
                ) from exc
            logger.warning("out of memory on a batch of %d texts; retrying it in halves", len(batch))
            half = len(batch) // 2
            return np.concatenate(
                [self._forward_splitting(batch[:half], encoded), self._forward_splitting(batch[half:], encoded)]
            )

    def _progress(self, total: int, show: bool | None) -> Any:
        if not (self.resolved.show_progress if show is None else show):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"embedding ({self.method})", unit="text")

    def _warn_truncation(self, encoded: list[EncodedText]) -> None:
        cut = [e.truncated_by for e in encoded if e.truncated_by]
        if cut:
            message = (
                f"{len(cut)} of {len(encoded)} inputs were longer than max_length={self.resolved.max_length} tokens "
                f"and were truncated (by up to {max(cut)} tokens, {sum(cut)} in total). Raise max_length or split "
                "long documents into chunks."
            )
            logger.warning(message)
            warnings.warn(message, TruncationWarning, stacklevel=4)  # the caller of KVEmbedder.encode

    # ------------------------------------------------------------------ one forward pass
    def embed_encoded(self, batch: list[EncodedText]) -> np.ndarray:
        """One forward pass over already tokenized inputs (from :meth:`tokenize`): ``(B, hidden)`` unit vectors.

        No batching, sorting or out-of-memory splitting: :meth:`encode` does that; benchmarks time this.
        """
        ids, mask, pool_mask = self.collate(batch)
        device = self.device
        ids, mask, pool_mask = ids.to(device), mask.to(device), pool_mask.to(device)
        # positions count real tokens only, so a left-padded row sees the same RoPE phases as alone
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        plan = build_plan(
            mask,
            layers=self.resolved.layers if self.spec.reroute else (),
            bias=self.resolved.bias,
            bidirectional=self.spec.bidirectional,
        )
        with self.lock, torch.inference_mode(), self._token_prepending(batch, mask):
            hidden = self.model(
                input_ids=ids, attention_mask=mask, position_ids=position_ids, **{PLAN_KWARG: plan}
            ).last_hidden_state  # (B, T, H)
            assert plan.last_index is not None
            vectors = pool(hidden, self.resolved.pooling, plan.last_index, pool_mask)  # (B, H) float32
        return vectors.cpu().numpy()

    def last_token_states(self, texts: Sequence[str], role: Role = "document") -> np.ndarray:
        """``(L, n, H)`` float32: each layer's output at each prompted text's last token, without re-routing."""
        items = check_texts(texts)
        encoded = self.tokenize(items, role)
        out = np.empty((self.num_layers, len(items), self.hidden_size), dtype=np.float32)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
        for batch in token_batches(order, [len(e.ids) for e in encoded], self.resolved.batch_tokens):
            ids, mask, _ = self.collate([encoded[i] for i in batch])
            ids, mask = ids.to(self.device), mask.to(self.device)
            plan = build_plan(mask, layers=(), bias=self.resolved.bias)
            assert plan.last_index is not None
            rows = torch.arange(len(batch), device=mask.device)
            with self.lock, torch.inference_mode():
                hidden = self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0),
                    output_hidden_states=True,
                    **{PLAN_KWARG: plan},
                ).hidden_states  # L + 1 tensors (B, T, H): embeddings, then each layer's output
                for layer in range(self.num_layers):
                    out[layer, batch] = hidden[layer + 1][rows, plan.last_index].float().cpu().numpy()
        return out

    @contextmanager
    def _token_prepending(self, batch: list[EncodedText], mask: torch.Tensor) -> Iterator[None]:
        """Forward pre-hooks that overwrite placeholders with the previous layer's state at their source position
        (token prepending: the last token; HTP: each sentence's last token), per each input's ``copies``."""
        if not self.token_prepending_layers:
            yield
            return
        width = mask.shape[1]
        left = self.resolved.padding_side == "left"
        rows_, targets_, sources_ = [], [], []
        for row, item in enumerate(batch):
            offset = width - len(item.ids) if left else 0
            for target, source in item.copies:
                rows_.append(row)
                targets_.append(offset + target)
                sources_.append(offset + source)
        if not rows_:
            yield
            return
        rows = torch.tensor(rows_, device=mask.device)  # (P,) one entry per copied position of the batch
        targets = torch.tensor(targets_, device=mask.device)  # (P,)
        sources = torch.tensor(sources_, device=mask.device)  # (P,)

        def overwrite(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            hidden = args[0] if args else kwargs["hidden_states"]  # (B, T, H): the previous layer's output
            hidden = hidden.clone()
            hidden[rows, targets] = hidden[rows, sources]  # (P, H) gathered before any is written
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        hooks = [
            self._decoder[i].register_forward_pre_hook(overwrite, with_kwargs=True)
            for i in self.token_prepending_layers
        ]
        try:
            yield
        finally:
            for handle in hooks:
                handle.remove()


def batch_invariance(dtype: torch.dtype) -> str:
    """What a text's vector keeps when other texts share its batch, in ``dtype`` (tests/dtype_tolerances.py
    measures it): float32 rounding only; in bfloat16, attention summed over a padded width rounds some values one
    step differently, and the difference grows through the layers."""
    if dtype == torch.float32:
        return "float32: equal alone and batched to ~1e-6 per component"
    return (
        f"{str(dtype).removeprefix('torch.')}: up to ~5e-3 per component alone vs batched (cosine >= 0.9997 after "
        "whitening); dtype='float32' or batch_tokens=1 for batch-independent vectors"
    )


def check_texts(texts: object) -> list[str]:
    """``texts`` as a list of strings, or :class:`TypeError` naming the first item that is not one."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a string or a sequence of strings; got {type(texts).__name__}")
    items = list(texts)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"texts[{i}] is {type(item).__name__}, not str; convert or drop it before encoding")
    return items


def token_batches(order: list[int], lengths: list[int], batch_tokens: int) -> Iterator[list[int]]:
    """Consecutive runs of ``order`` (longest first) whose padded size ``rows x longest`` fits the budget."""
    batch: list[int] = []
    longest = 0
    for index in order:
        longest_if_added = max(longest, lengths[index])
        if batch and longest_if_added * (len(batch) + 1) > batch_tokens:
            yield batch
            batch, longest_if_added = [], lengths[index]
        batch.append(index)
        longest = longest_if_added
    if batch:
        yield batch


def backbone_lock(model: torch.nn.Module) -> threading.RLock:
    """The one lock of a loaded backbone, shared by every embedder built over it.

    Embedders over the same model (other methods, the benchmark) must not run forwards, token-prepending
    hooks or the (not thread-safe) fast tokenizer concurrently.
    """
    lock = getattr(model, "_kvembed_lock", None)
    if lock is None:
        lock = threading.RLock()
        vars(model)["_kvembed_lock"] = lock
    return lock


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    message = str(exc).lower()
    return "out of memory" in message or "can't allocate memory" in message or "cannot allocate memory" in message


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _decoder_layers(model: torch.nn.Module, num_layers: int) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (``model.layers`` for Llama-style bases)."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers) == num_layers:
        return layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers:
            return module
    raise AttributeError(f"cannot find the {num_layers} decoder layers of {type(model).__name__}")


def _pad_id(tokenizer: Any) -> int:
    candidates = (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
    return next((v for v in candidates if isinstance(v, int)), 0)


__all__ = ["Forward", "backbone_lock", "batch_invariance", "check_texts", "token_batches"]
