"""kvembed_rag.mteb against mteb's EncoderProtocol, offline: the calls mteb makes, checked on a tiny model."""

from __future__ import annotations

import enum

import numpy as np
import pytest
import torch

from kvembed_rag.eval.mteb import MTEBEncoder

TEXTS = ["The quick brown fox.", "Meeting transcripts are long.", "Key and value states.", "A query"]


class PromptType(str, enum.Enum):  # mteb's own enum has these values
    query = "query"
    document = "document"


class _Dataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return len(TEXTS)

    def __getitem__(self, i: int) -> dict[str, str]:
        return {"text": TEXTS[i]}


@pytest.fixture(scope="module")
def wrapper(make_embedder):
    return MTEBEncoder(embedder=make_embedder("llama", layers=[2]))


def test_mteb2_dataloader_batches_and_prompt_types(wrapper):
    # mteb 2 hands a DataLoader whose default collation yields {"text": [...]} batches
    loader = torch.utils.data.DataLoader(_Dataset(), batch_size=3)
    meta = type("TaskMetadata", (), {"name": "SciFact", "type": "Retrieval"})()
    queries = wrapper.encode(
        loader, task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=PromptType.query
    )
    documents = wrapper.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default", prompt_type="document")
    assert queries.shape == (4, wrapper.embedder.dim) and queries.dtype == np.float32
    np.testing.assert_allclose(queries, wrapper.embedder.encode_queries(TEXTS), atol=1e-6)
    np.testing.assert_allclose(documents, wrapper.embedder.encode_documents(TEXTS), atol=1e-6)
    assert not np.allclose(queries, documents)  # the prompts differ


def test_mteb1_sentence_lists_and_empty_input(wrapper):
    vectors = wrapper.encode(TEXTS, task_name="STSBenchmark")
    np.testing.assert_allclose(vectors, wrapper.embedder.encode_documents(TEXTS), atol=1e-6)
    assert wrapper.encode([], task_name="x").shape == (0, wrapper.embedder.dim)
    with pytest.raises(TypeError, match="'text' field"):
        wrapper.encode([{"image": 1}])


def test_similarity_functions(wrapper):
    a = wrapper.encode(TEXTS[:2])
    b = wrapper.encode(TEXTS[2:])
    matrix = wrapper.similarity(a, b)
    assert isinstance(matrix, torch.Tensor) and matrix.shape == (2, 2)
    np.testing.assert_allclose(matrix.numpy(), a @ b.T, atol=1e-5)
    np.testing.assert_allclose(wrapper.similarity_pairwise(a, b).numpy(), (a * b).sum(1), atol=1e-5)
    np.testing.assert_allclose(wrapper.similarity(torch.from_numpy(a[0]), a).numpy()[0, 0], 1.0, atol=1e-5)


def test_model_meta_fields(wrapper):
    fields = wrapper.meta_fields()
    assert fields["embed_dim"] == wrapper.embedder.dim and fields["max_tokens"] == wrapper.embedder.max_length
    assert fields["similarity_fn_name"] == "cosine" and fields["n_parameters"] > 0
    assert fields["loader_kwargs"]["layers"] == [2] and fields["name"].startswith("kvembed-rag/")


def test_protocol_with_mteb_installed(wrapper):
    mteb = pytest.importorskip("mteb")
    assert isinstance(wrapper, mteb.models.models_protocols.EncoderProtocol)
    assert wrapper.mteb_model_meta.embed_dim == wrapper.embedder.dim
