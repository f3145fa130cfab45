"""``serve --engine ray``: the same app as two Ray Serve replicas on a local cluster bound to 127.0.0.1."""

from __future__ import annotations

import socket
from functools import partial
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="the [ray] extra (ray[serve]) is not installed")
pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
httpx = pytest.importorskip("httpx")

import ray  # noqa: E402
from ray import serve  # noqa: E402

from kvembed_rag import KVEmbedder  # noqa: E402
from kvembed_rag.serve import ray_engine  # noqa: E402
from kvembed_rag.serve.settings import ServeSettings  # noqa: E402

# Ray's processes talk over 127.0.0.1 only; starting a cluster and two replicas takes 20-60 s on 2 busy cores
pytestmark = [pytest.mark.enable_socket, pytest.mark.slow]

KEY = "ray-key"
MAX_LENGTH = 64


@pytest.fixture(scope="module")
def ray_server(make_embedder: Any, checkpoints: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    make_embedder("llama", max_length=MAX_LENGTH)  # the layer choice lands in the shared cache the replicas read
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    loader = partial(KVEmbedder.from_pretrained, str(checkpoints["llama"]), max_length=MAX_LENGTH)
    settings = ServeSettings(port=port, api_key=KEY)
    try:
        ray_engine.start(loader, settings, replicas=2, cpus_per_replica=0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_equal_vectors(ray_server: str, make_embedder: Any) -> None:
    openai = pytest.importorskip("openai")
    embedder = make_embedder("llama", max_length=MAX_LENGTH)
    client = openai.OpenAI(base_url=f"{ray_server}/v1", api_key=KEY, max_retries=0)
    texts = ["Ray Serve replica", "another document", "a query about layers"]
    for model, role in [("kvembed-rag", "document"), ("kvembed-rag:query", "query")]:
        for _ in range(4):  # several calls: they land on both replicas
            response = client.embeddings.create(model=model, input=texts)
            got = np.asarray([item.embedding for item in response.data], dtype=np.float32)
            np.testing.assert_allclose(got, embedder.encode(texts, role), atol=1e-5)
    pids = {httpx.get(f"{ray_server}/health", timeout=10).json()["pid"] for _ in range(40)}
    assert len(pids) == 2  # both replicas are up and reachable through the proxy


def test_errors_and_key_hold_behind_the_proxy(ray_server: str) -> None:
    missing = httpx.post(f"{ray_server}/v1/embeddings", json={"input": "a", "model": "kvembed-rag"}, timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    empty = httpx.post(
        f"{ray_server}/v1/embeddings",
        json={"input": [], "model": "kvembed-rag"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "input"
