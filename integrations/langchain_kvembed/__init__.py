"""LangChain integration of kvembed-rag: ``KVEmbeddings`` and ``KVFaissVectorStore``."""

from langchain_kvembed.embeddings import KVEmbeddings
from langchain_kvembed.retrievers import KVFaissRetriever, KVParentDocumentRetriever
from langchain_kvembed.splitters import KVTokenTextSplitter
from langchain_kvembed.vectorstores import KVFaissVectorStore

__all__ = ["KVEmbeddings", "KVFaissRetriever", "KVFaissVectorStore", "KVParentDocumentRetriever", "KVTokenTextSplitter"]
