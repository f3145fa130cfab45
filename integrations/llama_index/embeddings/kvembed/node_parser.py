"""``KVTokenNodeParser``: a LlamaIndex node parser that cuts by the embedder's own tokenizer and budget.

LlamaIndex embeds a node as its metadata string plus its text (``MetadataMode.EMBED``), inside this
package's prompt. The parser subtracts both from ``chunk_size`` (at most ``max_length``), so every node fits one input
and nothing is cut off at embedding time. Chunks are the ones ``kvembed-rag index`` makes
(:func:`kvembed_rag.chunk_text`): whole when a text fits, else windows overlapping by ``chunk_overlap``
tokens. Nodes keep their source document as ``ref_doc_id`` (LlamaIndex's ``SOURCE`` relationship), which
:class:`~llama_index.embeddings.kvembed.KVDocumentRetriever` uses to return documents by their best node.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.node_parser.interface import MetadataAwareTextSplitter

from kvembed_rag import KVEmbedder, chunk_text, passage_input_tokens, text_token_budget


def _embedder_of(embed_model: Any) -> KVEmbedder:
    embedder = getattr(embed_model, "embedder", embed_model)
    if not isinstance(embedder, KVEmbedder):
        raise TypeError(
            "KVTokenNodeParser needs a KVEmbedding or KVEmbedder (it splits by that model's tokens); "
            f"got {type(embed_model).__name__}"
        )
    return embedder


class KVTokenNodeParser(MetadataAwareTextSplitter):
    """Split documents into nodes that each fit one embedder input (prompt and metadata included).

    Example:
        .. code-block:: python

            from llama_index.core import VectorStoreIndex
            from llama_index.embeddings.kvembed import KVEmbedding, KVTokenNodeParser

            embed_model = KVEmbedding()
            parser = KVTokenNodeParser(embed_model, chunk_overlap=64)
            index = VectorStoreIndex.from_documents(documents, embed_model=embed_model, transformations=[parser])

    ``chunk_size`` is tokens per embedder input, prompt and metadata included (default: enough for 2,048 text
    tokens, ``kvembed_rag.PASSAGE_TOKENS``, the passage size that won on QMSum, at most ``max_length``; a smaller
    ``chunk_size`` for smaller nodes).
    """

    chunk_size: int | None = Field(
        default=None, description="tokens per embedder input (default: enough for 2,048 text tokens, prompt included)"
    )
    chunk_overlap: int = Field(default=64, ge=0, description="tokens shared by consecutive chunks")
    margin: int = Field(default=8, ge=0, description="spare tokens for merges at the chunk edges")
    embedder_fingerprint: str = Field(default="", description="the embedder's fingerprint (part of cache keys)")

    _embedder: KVEmbedder = PrivateAttr()

    def __init__(self, embed_model: Any, **data: Any) -> None:
        embedder = _embedder_of(embed_model)
        super().__init__(**{**data, "embedder_fingerprint": embedder.fingerprint})
        self._embedder = embedder
        if self._budget("") < 16:
            raise ValueError(f"chunk_size={self.chunk_size} leaves under 16 text tokens after the prompt")

    @classmethod
    def class_name(cls) -> str:
        return "KVTokenNodeParser"

    @property
    def embedder(self) -> KVEmbedder:
        return self._embedder

    def _input_tokens(self, metadata_str: str) -> int:
        # default: inputs that hold PASSAGE_TOKENS (2,048) text tokens, the passage size that won on QMSum
        size = self.chunk_size or passage_input_tokens(self._embedder, margin=self.margin)
        if not metadata_str:
            return size
        # LlamaIndex's default text template puts "{metadata_str}\n\n" before the content
        return size - len(self._embedder.token_offsets(metadata_str + "\n\n"))

    def _budget(self, metadata_str: str) -> int:
        return text_token_budget(self._embedder, self._input_tokens(metadata_str), margin=self.margin)

    def split_text(self, text: str) -> list[str]:
        return self.split_text_metadata_aware(text, "")

    def split_text_metadata_aware(self, text: str, metadata_str: str) -> list[str]:
        if self._budget(metadata_str) < 16:
            raise ValueError(
                f"the node's metadata takes {len(self._embedder.token_offsets(metadata_str))} tokens and leaves "
                "too few for text; exclude metadata from embedding (excluded_embed_metadata_keys) or raise chunk_size"
            )
        chunks = chunk_text(
            self._embedder,
            text,
            max_tokens=self._input_tokens(metadata_str),
            overlap=self.chunk_overlap,
            margin=self.margin,
        )
        return [chunk.text for chunk in chunks]
