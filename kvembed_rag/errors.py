"""Every exception and warning kvembed-rag raises on purpose. Each message says what was wrong and what to do."""

from __future__ import annotations


class KVEmbedError(Exception):
    """Base class of every error this package raises on purpose."""


class UnsupportedModelError(KVEmbedError):
    """The model cannot be re-routed: it does not dispatch attention through transformers' registry."""


class UnsupportedAttentionError(KVEmbedError, ValueError):
    """An attention kernel was requested that has no place for the prefix slot's bias (flash, flex)."""


class ModelLoadError(KVEmbedError):
    """A model specification could not be resolved to weights and a tokenizer."""


class ConfigError(KVEmbedError, ValueError):
    """An option of :class:`~kvembed_rag.config.KVEmbedConfig` is invalid (the message names it)."""


class EmbeddingMemoryError(KVEmbedError, MemoryError):
    """A single text does not fit in memory even in a batch of one."""


class IndexCorruptError(KVEmbedError):
    """An index directory is missing files, fails its checksums or does not add up."""


class EmbedderMismatchError(KVEmbedError, ValueError):
    """The index (or a statistics file) was made by a different embedder than the one using it."""


class ChunkingMismatchError(KVEmbedError, ValueError):
    """Documents would be added to an index in passages of another size (or overlap) than the index holds."""


class PostprocessMismatchError(EmbedderMismatchError):
    """A post-processing statistics file was fitted for another embedder configuration (or post-processing)."""


class TruncationWarning(UserWarning):
    """Some inputs were longer than ``max_length`` and lost their tail."""


class MergedSlotFallbackWarning(RuntimeWarning):
    """The fast merged-slot kernel disagreed with the explicit-mask reference at load; the reference is used."""
