"""``KVTokenTextSplitter``: a LangChain ``TextSplitter`` that cuts by the embedder's own tokenizer and budget.

Generic splitters count characters (or another model's tokens), so a chunk either wastes the window or is
cut again, silently, at ``max_length``. This one asks the embedder: a chunk holds as many tokens as one
input can after the prompt (and, for ``echo``, the prompt's second copy of the text), overlapping by
``chunk_overlap`` tokens, with exact character offsets. It is the splitting that ``kvembed-rag index``
uses (:func:`kvembed_rag.chunk_text`), so the CLI and LangChain make the same chunks.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from langchain_core.documents import Document
from langchain_text_splitters import TextSplitter

from kvembed_rag import KVEmbedder, chunk_text, passage_input_tokens, text_token_budget


def _embedder_of(embeddings: Any) -> KVEmbedder:
    embedder = getattr(embeddings, "embedder", embeddings)
    if not isinstance(embedder, KVEmbedder):
        raise TypeError(
            f"KVTokenTextSplitter needs a KVEmbeddings or KVEmbedder (it splits by that model's tokens); "
            f"got {type(embeddings).__name__}"
        )
    return embedder


class KVTokenTextSplitter(TextSplitter):
    """Split documents into chunks that each fit one embedder input, prompt included.

    Example:
        .. code-block:: python

            from langchain_kvembed import KVEmbeddings, KVTokenTextSplitter

            embeddings = KVEmbeddings()
            splitter = KVTokenTextSplitter(embeddings, chunk_overlap=64)
            chunks = splitter.split_documents(documents)   # metadata copied, plus start_index / chunk_index

    ``chunk_size`` is tokens per *embedder input* (prompt included), not characters; the default holds 2,048
    text tokens (``kvembed_rag.PASSAGE_TOKENS``, the passage size that won on QMSum), at most ``max_length``.
    A text that fits is kept whole.
    ``title_key`` names a metadata field whose value heads every chunk of a document (as ``kvembed-rag index``
    does with titles).
    """

    def __init__(
        self,
        embeddings: Any,
        *,
        chunk_size: int | None = None,
        chunk_overlap: int = 64,
        add_start_index: bool = True,
        title_key: str | None = None,
        margin: int = 8,
        **kwargs: Any,
    ) -> None:
        self._embedder = _embedder_of(embeddings)
        # default: inputs that hold PASSAGE_TOKENS (2,048) text tokens, the passage size that won on QMSum
        size = chunk_size or passage_input_tokens(self._embedder, margin=margin)
        self._margin = margin
        budget = text_token_budget(self._embedder, size, margin=margin)
        if budget < 16:
            raise ValueError(f"chunk_size={size} leaves {budget} text tokens after the prompt; raise chunk_size")
        super().__init__(
            chunk_size=budget,
            chunk_overlap=chunk_overlap,
            length_function=self._count_tokens,
            add_start_index=add_start_index,
            strip_whitespace=False,  # offsets must point into the original text
            **kwargs,
        )
        self._input_tokens = size
        self._title_key = title_key

    @property
    def embedder(self) -> KVEmbedder:
        return self._embedder

    def _count_tokens(self, text: str) -> int:
        return len(self._embedder.token_offsets(text))

    def split_text(self, text: str) -> list[str]:
        """Chunk texts of ``text`` (the whole text when it fits)."""
        return [chunk.text for chunk in self._chunks(text)]

    def _chunks(self, text: str, title: str | None = None) -> list[Any]:
        return chunk_text(
            self._embedder,
            text,
            title=title,
            max_tokens=self._input_tokens,
            overlap=self._chunk_overlap,
            margin=self._margin,
        )

    def create_documents(self, texts: list[str], metadatas: list[dict[Any, Any]] | None = None) -> list[Document]:
        """One ``Document`` per chunk with the source's metadata plus ``start_index`` (exact character offset,
        when ``add_start_index``), ``end_index``, ``chunk_index`` and ``chunk_count``."""
        metadatas = metadatas or [{} for _ in texts]
        if len(metadatas) != len(texts):
            raise ValueError(f"got {len(metadatas)} metadatas for {len(texts)} texts")
        documents = []
        for text, metadata in zip(texts, metadatas, strict=True):
            title = metadata.get(self._title_key) if self._title_key else None
            chunks = self._chunks(text, str(title) if title else None)
            for chunk in chunks:
                extra: dict[str, Any] = {"chunk_index": chunk.index, "chunk_count": len(chunks)}
                if self._add_start_index:
                    extra.update(start_index=chunk.start, end_index=chunk.end)
                documents.append(Document(page_content=chunk.text, metadata={**copy.deepcopy(metadata), **extra}))
        return documents

    def split_documents(self, documents: Iterable[Document]) -> list[Document]:
        """Split each document; chunks keep its metadata (and get the offsets described above)."""
        documents = list(documents)
        return self.create_documents(
            [document.page_content for document in documents], [dict(document.metadata) for document in documents]
        )
