"""``kvembed-rag serve`` on a tiny random checkpoint, over real loopback HTTP with real clients.

The server runs uvicorn in a thread on 127.0.0.1 (a pre-bound port, so no race for it); sockets may
connect to 127.0.0.1 only. Every vector is checked against an in-process ``encode`` of the same embedder.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from dtype_tolerances import DTYPES, VECTOR_TOLERANCE, dtype_option

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from kvembed_rag.cli import serve as command  # noqa: E402
from kvembed_rag.serve.app import TRUNCATED_HEADER, create_app  # noqa: E402
from kvembed_rag.serve.settings import ServeSettings  # noqa: E402

pytestmark = [
    pytest.mark.allow_hosts(["127.0.0.1"]),  # sockets on, but connections to loopback only
    pytest.mark.filterwarnings("ignore::kvembed_rag.TruncationWarning"),  # the responses report truncation
]

KEY = "test-key-1234"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_LENGTH = 64
MAX_INPUT_TOKENS = 256
ATOL = 1e-5

WORDS = [
    *("retrieval", "embeddings", "documents", "queries", "layers", "tokens"),
    *("prefix", "attention", "fox", "dog", "meeting", "essay"),
]


def _texts(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n)]


class ThreadServer:
    """uvicorn serving ``app`` from a thread, on a socket bound here to a free loopback port."""

    def __init__(self, app: Any, graceful_timeout: int = 10) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=graceful_timeout, access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the server did not shut down"

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def embedder(make_embedder: Any) -> Any:
    return make_embedder("llama", max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def server(embedder: Any) -> Iterator[ThreadServer]:
    settings = ServeSettings(api_key=KEY, max_input_tokens=MAX_INPUT_TOKENS, max_body_bytes=8 * 1024 * 1024)
    with ThreadServer(create_app(embedder, settings)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[Any]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def _vectors(body: dict[str, Any]) -> np.ndarray:
    rows = []
    for i, item in enumerate(body["data"]):
        assert item["index"] == i and item["object"] == "embedding"
        value = item["embedding"]
        rows.append(np.frombuffer(base64.b64decode(value), dtype="<f4") if isinstance(value, str) else value)
    return np.asarray(rows, dtype=np.float32)


def _assert_error(response: Any, status: int, *, param: str | None = None, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    assert error["type"] in ("invalid_request_error", "server_error")
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return str(error["message"])


# ---------------------------------------------------------------------------------------------- clients
@pytest.mark.parametrize("role", ["document", "query"])
@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_openai_client_matches_in_process(server: ThreadServer, embedder: Any, role: str, encoding_format: Any) -> None:
    openai = pytest.importorskip("openai")
    texts = ["What is KV-Embedding?", "Paris is in France.", "", "a b c " * 5]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    extra = {} if encoding_format is None else {"encoding_format": encoding_format}  # None: the client asks base64
    model = "kvembed-rag" if role == "document" else "kvembed-rag:query"
    response = client.embeddings.create(model=model, input=texts, **extra)
    # an explicit base64 comes back as the string; without encoding_format the client asks base64 and decodes it
    got = _vectors({"data": [{"object": d.object, "index": d.index, "embedding": d.embedding} for d in response.data]})
    assert isinstance(response.data[0].embedding, str) == (encoding_format == "base64")
    expected = embedder.encode(texts, role)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=ATOL)
    tokens = sum(len(e.ids) for e in embedder.tokenize(texts, role))
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    assert response.model == model


def test_openai_client_input_type_field_and_single_string(server: ThreadServer, embedder: Any) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    for input_type, role in [("query", "query"), ("search_query", "query"), ("search_document", "document")]:
        response = client.embeddings.create(
            model="kvembed-rag", input="Which token is re-routed?", extra_body={"input_type": input_type}
        )
        np.testing.assert_allclose(
            response.data[0].embedding, embedder.encode("Which token is re-routed?", role), atol=ATOL
        )
    models = {m.id for m in client.models.list()}
    assert models == {"kvembed-rag", "kvembed-rag:query", "kvembed-rag:document"}
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_langchain_openai_embeddings(server: ThreadServer, embedder: Any) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    texts = ["KV re-routing in a few layers.", "The lazy dog sleeps.", "x"]
    kwargs = dict(base_url=f"{server.url}/v1", api_key=KEY, check_embedding_ctx_length=False, max_retries=0)
    documents = langchain_openai.OpenAIEmbeddings(model="kvembed-rag", **kwargs)
    queries = langchain_openai.OpenAIEmbeddings(model="kvembed-rag:query", **kwargs)
    got_docs = documents.embed_documents(texts)
    assert all(isinstance(x, float) for x in got_docs[0])
    np.testing.assert_allclose(got_docs, embedder.encode(texts, "document"), atol=ATOL)
    np.testing.assert_allclose(queries.embed_query(texts[0]), embedder.encode(texts[0], "query"), atol=ATOL)
    got = asyncio.run(queries.aembed_documents(texts))
    np.testing.assert_allclose(got, embedder.encode(texts, "query"), atol=ATOL)


def test_llama_index_openai_like_embedding(server: ThreadServer, embedder: Any) -> None:
    openai_like = pytest.importorskip("llama_index.embeddings.openai_like")
    texts = [f"node {i} about retrieval and attention" for i in range(13)]  # > embed_batch_size: two requests
    kwargs = dict(api_base=f"{server.url}/v1", api_key=KEY, max_retries=0)
    documents = openai_like.OpenAILikeEmbedding(model_name="kvembed-rag", **kwargs)
    queries = openai_like.OpenAILikeEmbedding(model_name="kvembed-rag:query", **kwargs)
    np.testing.assert_allclose(documents.get_text_embedding_batch(texts), embedder.encode(texts, "document"), atol=ATOL)
    np.testing.assert_allclose(queries.get_query_embedding(texts[0]), embedder.encode(texts[0], "query"), atol=ATOL)
    got = asyncio.run(queries.aget_text_embedding_batch(texts[:3]))
    np.testing.assert_allclose(got, embedder.encode(texts[:3], "query"), atol=ATOL)


# ---------------------------------------------------------------------------------------------- protocol
def test_truncation_is_reported_never_silent(client: Any, embedder: Any) -> None:
    long_text = "retrieval " * 40
    texts = ["short", long_text, "also short"]
    full = len(embedder.tokenize([long_text])[0].ids) + embedder.tokenize([long_text])[0].truncated_by
    assert MAX_LENGTH < full <= MAX_INPUT_TOKENS  # cut by the embedder, not refused by the server
    response = client.post("/v1/embeddings", json={"input": texts, "model": "kvembed-rag"}, headers=AUTH)
    assert response.status_code == 200
    assert response.headers[TRUNCATED_HEADER] == "1"
    assert response.json()["kvembed"]["truncated"] == [1]
    assert all(len(e.ids) <= MAX_LENGTH for e in embedder.tokenize(texts))
    np.testing.assert_allclose(_vectors(response.json()), embedder.encode(texts), atol=ATOL)
    plain = client.post("/v1/embeddings", json={"input": "short", "model": "kvembed-rag"}, headers=AUTH)
    assert plain.headers[TRUNCATED_HEADER] == "0" and plain.json()["kvembed"]["truncated"] == []


def test_dimensions_equal_to_the_model_width_only(client: Any, embedder: Any) -> None:
    ok = client.post(
        "/v1/embeddings", json={"input": "x", "model": "kvembed-rag", "dimensions": embedder.dim}, headers=AUTH
    )
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == embedder.dim
    bad = client.post("/v1/embeddings", json={"input": "x", "model": "kvembed-rag", "dimensions": 16}, headers=AUTH)
    message = _assert_error(bad, 400, param="dimensions", code="unsupported_dimensions")
    assert "cannot" in message or "no post-processing" in message


def test_a_reducer_hook_serves_other_dimensions(embedder: Any) -> None:
    def first_k(vectors: np.ndarray, k: int) -> np.ndarray:
        cut = vectors[:, :k]
        return cut / np.linalg.norm(cut, axis=1, keepdims=True)

    app = create_app(embedder, ServeSettings(), reducer=first_k)

    async def go() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return await http.post(
                    "/v1/embeddings", json={"input": ["a", "b"], "model": "kvembed-rag", "dimensions": 8}
                )

    response = asyncio.run(go())
    assert response.status_code == 200
    np.testing.assert_allclose(_vectors(response.json()), first_k(embedder.encode(["a", "b"]), 8), atol=ATOL)


def test_a_post_processing_with_ordered_directions_serves_smaller_dimensions(embedder: Any) -> None:
    reduced = embedder.variant(postprocess="center@8")  # PCA to 8 dims: its first k coordinates are @k
    app = create_app(reduced, ServeSettings())

    async def go(dimensions: int) -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                body = {"input": ["a", "b"], "model": "kvembed-rag", "dimensions": dimensions}
                return await http.post("/v1/embeddings", json=body)

    response = asyncio.run(go(4))
    assert response.status_code == 200
    expected = embedder.variant(postprocess="center@4").encode(["a", "b"])
    np.testing.assert_allclose(_vectors(response.json()), expected, atol=ATOL)
    assert asyncio.run(go(9)).status_code == 400  # more than the embedder has


def test_health_models_and_metrics(client: Any, embedder: Any) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["fingerprint"] == embedder.fingerprint and health.json()["dim"] == embedder.dim
    models = client.get("/v1/models", headers=AUTH).json()["data"]
    roles = {card["id"]: card["kvembed"]["role"] for card in models}
    assert roles == {"kvembed-rag": "document", "kvembed-rag:document": "document", "kvembed-rag:query": "query"}
    assert client.get("/v1/models/kvembed-rag:query", headers=AUTH).json()["kvembed"]["role"] == "query"
    assert client.get("/metrics").status_code == 401  # the key guards metrics too
    client.post("/v1/embeddings", json={"input": ["m1", "m2"], "model": "kvembed-rag"}, headers=AUTH)
    text = client.get("/metrics", headers=AUTH).text
    for name in (
        'kvembed_requests_total{endpoint="/v1/embeddings",status="200"}',
        "kvembed_tokens_total",
        "kvembed_batch_inputs_bucket",
        "kvembed_request_latency_seconds_bucket",
        "kvembed_ready 1.0",
    ):
        assert name in text


def _post_raw(client: Any, content: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post(
        "/v1/embeddings", content=content, headers={"Content-Type": "application/json", **AUTH, **(headers or {})}
    )


M = b'"model": "kvembed-rag"'
BAD_BODIES = [
    pytest.param(b'{"input": ["a", "model": ', 400, None, None, id="malformed-json"),
    pytest.param(b"", 400, None, None, id="empty-body"),
    pytest.param(b'["a"]', 400, None, None, id="not-an-object"),
    pytest.param(b'{"model": "kvembed-rag"}', 400, "input", None, id="missing-input"),
    pytest.param(b'{"input": "a"}', 400, "model", None, id="missing-model"),
    pytest.param(b'{"input": 5, "model": "kvembed-rag"}', 400, "input", None, id="input-number"),
    pytest.param(b'{"input": ["a", 7], "model": "kvembed-rag"}', 400, "input[1]", None, id="input-item-number"),
    pytest.param(b'{"input": [[1, 2, 3]], "model": "kvembed-rag"}', 400, "input[0]", None, id="token-arrays"),
    pytest.param(b'{"input": [], "model": "kvembed-rag"}', 400, "input", None, id="empty-list"),
    pytest.param(b'{"input": "a", "model": 3}', 400, "model", None, id="model-number"),
    pytest.param(b'{"input": "a", "model": "gpt-4"}', 404, "model", "model_not_found", id="unknown-model"),
    pytest.param(b'{"input": "a", ' + M + b', "encoding_format": "hex"}', 400, "encoding_format", None, id="format"),
    pytest.param(b'{"input": "a", ' + M + b', "dimensions": "64"}', 400, "dimensions", None, id="dims-type"),
    pytest.param(b'{"input": "a", ' + M + b', "input_type": "passage"}', 400, "input_type", None, id="role"),
    pytest.param(
        b'{"input": "a", "model": "kvembed-rag:query", "input_type": "document"}',
        400,
        "input_type",
        None,
        id="conflict",
    ),
    pytest.param(b'{"input": "a", ' + M + b', "user": 5}', 400, "user", None, id="user-type"),
    pytest.param(b'{"input": "caf\xe9", "model": "kvembed-rag"}', 400, None, None, id="non-utf8"),
    pytest.param(b"\xff\xfe\x00{", 400, None, None, id="binary"),
    pytest.param(
        json.dumps({"input": ["a"] * 10_000, "model": "kvembed-rag"}).encode(),
        400,
        "input",
        "too_many_inputs",
        id="10k",
    ),
    pytest.param(
        json.dumps({"input": ["retrieval " * 300], "model": "kvembed-rag"}).encode(),
        400,
        "input[0]",
        "input_too_long",
        id="tokens-per-input",
    ),
]


@pytest.mark.parametrize(("body", "status", "param", "code"), BAD_BODIES)
def test_bad_input_gets_openai_error(
    client: Any, embedder: Any, body: bytes, status: int, param: Any, code: Any
) -> None:
    _assert_error(_post_raw(client, body), status, param=param, code=code)
    good = client.post("/v1/embeddings", json={"input": ["still fine"], "model": "kvembed-rag"}, headers=AUTH)
    assert good.status_code == 200
    np.testing.assert_allclose(_vectors(good.json()), embedder.encode(["still fine"]), atol=ATOL)


def test_ten_megabyte_bodies_are_refused_with_and_without_length(client: Any, embedder: Any) -> None:
    big = json.dumps({"input": ["x" * (10 * 1024 * 1024)], "model": "kvembed-rag"}).encode()
    message = _assert_error(_post_raw(client, big), 413, code="body_too_large")
    assert "8,388,608 bytes" in message

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold on the stream too
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    _assert_error(_post_raw(client, chunks()), 413, code="body_too_large")
    good = client.post("/v1/embeddings", json={"input": "after the flood", "model": "kvembed-rag"}, headers=AUTH)
    np.testing.assert_allclose(_vectors(good.json())[0], embedder.encode("after the flood"), atol=ATOL)


def test_api_key_missing_or_wrong(client: Any, server: ThreadServer) -> None:
    body = {"input": "a", "model": "kvembed-rag"}
    assert "missing API key" in _assert_error(client.post("/v1/embeddings", json=body), 401, code="invalid_api_key")
    wrong = client.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer test-key-O"})
    assert "incorrect" in _assert_error(wrong, 401, code="invalid_api_key")
    basic = client.post("/v1/embeddings", json=body, headers={"Authorization": f"Basic {KEY}"})
    _assert_error(basic, 401, code="invalid_api_key")
    _assert_error(client.get("/v1/models"), 401)
    assert client.get("/health").status_code == 200  # load balancers probe without a key
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0).embeddings.create(**body)


def test_unknown_routes_and_methods_answer_in_openai_shape(client: Any) -> None:
    _assert_error(client.get("/v1/chat/completions", headers=AUTH), 404)
    _assert_error(client.get("/v1/embeddings", headers=AUTH), 405)


# ---------------------------------------------------------------------------------------------- load
def test_load_64_concurrent_clients_every_vector_right(server: ThreadServer, embedder: Any) -> None:
    rng = random.Random(7)
    requests = []  # (role, texts): 320 requests of 1-12 inputs, 1-12 words each, both roles
    for _ in range(320):
        requests.append((rng.choice(["document", "query"]), _texts(rng, rng.choice([1, 1, 2, 3, 5, 12]))))
    expected: dict[tuple[str, str], np.ndarray] = {}
    for role in ("document", "query"):
        unique = sorted({t for r, texts in requests if r == role for t in texts})
        expected.update({(role, t): v for t, v in zip(unique, embedder.encode(unique, role), strict=True)})
    before = _batch_stats(server)

    async def run() -> list[str]:
        errors: list[str] = []
        queue: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
        for item in requests:
            queue.put_nowait(item)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60, limits=limits) as http:

            async def worker(w: int) -> None:
                while not queue.empty():
                    role, texts = queue.get_nowait()
                    model = "kvembed-rag" if role == "document" else "kvembed-rag:query"
                    body = {"input": texts, "model": model, "encoding_format": "base64" if w % 2 else "float"}
                    response = await http.post("/v1/embeddings", json=body)
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                        continue
                    got = _vectors(response.json())
                    want = np.stack([expected[(role, t)] for t in texts])
                    if got.shape != want.shape or not np.allclose(got, want, atol=ATOL):
                        errors.append(f"wrong vectors for {texts[:2]} ({role})")

            await asyncio.gather(*(worker(w) for w in range(64)))
        return errors

    errors = asyncio.run(run())
    assert errors == []
    calls, merged_requests = (a - b for a, b in zip(_batch_stats(server), before, strict=True))
    assert 0 < calls < len(requests)  # concurrent requests were merged into fewer model calls
    assert merged_requests == len(requests)


def _batch_stats(server: ThreadServer) -> tuple[float, float]:
    """(model calls, requests served by them) from the server's batch histogram."""
    histogram = server.app.state.kvembed.metrics.batch_requests
    count = sum_ = 0.0
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                sum_ = sample.value
    return count, sum_


# ---------------------------------------------------------------------------------------------- lifecycle
def test_health_is_503_until_the_factory_has_loaded(embedder: Any) -> None:
    release = threading.Event()

    def factory() -> Any:
        release.wait(10)
        return embedder

    app = create_app(factory, ServeSettings())

    async def go() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                loading = await http.get("/health")
                assert loading.status_code == 503 and loading.json()["status"] == "loading"
                early = await http.post("/v1/embeddings", json={"input": "a", "model": "kvembed-rag"})
                _assert_error(early, 503, code="model_not_ready")
                release.set()
                for _ in range(500):
                    if (await http.get("/health")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
                response = await http.post("/v1/embeddings", json={"input": "a", "model": "kvembed-rag"})
                np.testing.assert_allclose(_vectors(response.json())[0], embedder.encode("a"), atol=ATOL)

    asyncio.run(go())


def test_a_failed_load_is_reported_and_the_cli_server_exits_1() -> None:
    def factory() -> Any:
        raise OSError("no weights at /nowhere")

    with socket.socket() as probe:  # a free port for the in-process CLI server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = command._serve_local(factory, ServeSettings(port=port), log_level="critical")
    assert code == 1

    app = create_app(factory, ServeSettings())

    async def go() -> None:
        async with app.router.lifespan_context(app):
            await asyncio.sleep(0.2)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                health = await http.get("/health")
                assert health.status_code == 503 and "no weights at /nowhere" in health.json()["error"]
                failed = await http.post("/v1/embeddings", json={"input": "a", "model": "kvembed-rag"})
                assert "failed to load" in _assert_error(failed, 503)

    asyncio.run(go())


class BlockingEmbedder:
    """The tiny embedder whose encode waits for a signal, so requests are surely in flight at shutdown."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.dim, self.max_length, self.fingerprint = inner.dim, inner.max_length, inner.fingerprint
        self.release = threading.Event()

    def tokenize(self, texts: list[str], role: str = "document") -> Any:
        return self.inner.tokenize(texts, role)

    def encode(self, texts: list[str], role: str = "document") -> np.ndarray:
        self.release.wait(20)
        return self.inner.encode(texts, role)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


def test_graceful_shutdown_finishes_in_flight_requests(embedder: Any) -> None:
    blocking = BlockingEmbedder(embedder)
    running = ThreadServer(create_app(blocking, ServeSettings()), graceful_timeout=20).__enter__()
    texts = [[f"in flight {i}", "shared text"] for i in range(4)]
    results: list[Any] = [None] * len(texts)

    def call(i: int) -> None:
        with httpx.Client(base_url=running.url, timeout=30) as http:
            results[i] = http.post("/v1/embeddings", json={"input": texts[i], "model": "kvembed-rag"})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    batcher = running.app.state.kvembed.batcher
    deadline = time.monotonic() + 20
    while batcher.pending_inputs < 8:  # every request is queued or on the (blocked) model
        assert time.monotonic() < deadline, "the requests never reached the server"
        time.sleep(0.01)
    running.server.should_exit = True  # shutdown starts while all four are in flight
    time.sleep(0.3)
    blocking.release.set()
    running.stop()  # returns once uvicorn and the batcher have finished
    for thread in threads:
        thread.join(10)
    for i, response in enumerate(results):
        assert response is not None and response.status_code == 200, response
        np.testing.assert_allclose(_vectors(response.json()), embedder.encode(texts[i]), atol=ATOL)
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{running.url}/v1/embeddings", json={"input": "late", "model": "kvembed-rag"}, timeout=2)


def test_cli_serve_loads_after_listening_serves_and_stops_on_sigterm(
    checkpoints: Any, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole command in this process's main thread (where uvicorn takes SIGTERM); a helper thread is the client."""
    from kvembed_rag.cli import main

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("KVEMBED_API_KEY", "from-env")
    url = f"http://127.0.0.1:{port}"
    seen: dict[str, Any] = {}

    def client() -> None:
        try:
            deadline = time.monotonic() + 60
            statuses = []
            while time.monotonic() < deadline:
                try:
                    statuses.append(httpx.get(f"{url}/health", timeout=2).status_code)
                    if statuses[-1] == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
            seen["health"] = statuses
            body = {"input": ["over the CLI"], "model": "kvembed-rag:query"}
            headers = {"Authorization": "Bearer from-env"}
            seen["response"] = httpx.post(f"{url}/v1/embeddings", json=body, headers=headers, timeout=30).json()
            seen["no_key"] = httpx.post(f"{url}/v1/embeddings", json=body, timeout=30).status_code
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's handler, installed while it serves: a graceful stop

    helper = threading.Thread(target=client, daemon=True)
    helper.start()
    argv = ["serve", "--model", str(checkpoints["llama"]), "--max-length", str(MAX_LENGTH), "--port", str(port)]
    assert main([*argv, "--log-level", "critical"]) == 0
    helper.join(10)
    assert seen["health"][-1] == 200
    np.testing.assert_allclose(_vectors(seen["response"]), embedder.encode(["over the CLI"], "query"), atol=ATOL)
    assert seen["no_key"] == 401


def test_settings_and_flags_are_validated() -> None:
    with pytest.raises(ValueError, match="max_inputs"):
        ServeSettings(max_inputs=0)
    with pytest.raises(ValueError, match="model_name"):
        ServeSettings(model_name="a:b")
    assert "secret" not in repr(ServeSettings(api_key="secret"))
    from kvembed_rag.cli import build_parser, main

    args = build_parser().parse_args(["serve", "--port", "9001", "--max-input-tokens", "100", "--method", "mean"])
    settings = command.settings_from_args(args)
    assert (settings.host, settings.port, settings.max_input_tokens) == ("127.0.0.1", 9001, 100)
    assert main(["serve", "--max-inputs", "0"]) == 2
    assert main(["serve", "--layers", "a,b"]) == 2


class FlakyEmbedder(BlockingEmbedder):
    """Fails any call that contains the text "boom" (a stand-in for one input that breaks the model)."""

    def encode(self, texts: list[str], role: str = "document") -> np.ndarray:
        if "boom" in texts:
            raise RuntimeError("the model broke on this input")
        return self.inner.encode(texts, role)


@pytest.mark.parametrize("dtype", DTYPES)
def test_merged_requests_match_in_process_in_each_dtype(make_embedder: Any, dtype: str) -> None:
    """Served = in-process in the dtype users get: concurrent requests merged into one model call give each
    request's texts what ``encode`` gives them on their own, within the dtype's batch noise."""
    from kvembed_rag.serve.batching import Batcher

    embedder = make_embedder("gemma3", max_length=MAX_LENGTH, **dtype_option(dtype))
    batcher = Batcher(embedder, max_wait_s=0.2, max_input_tokens=MAX_INPUT_TOKENS)
    jobs = [_texts(random.Random(seed), 1 + seed % 3) for seed in range(8)] + [["retrieval " * 40]]

    async def go() -> list[Any]:
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(texts, "document") for texts in jobs))
        await batcher.stop()
        return list(results)

    results = asyncio.run(go())
    calls = next(
        x.value for m in batcher.metrics.batch_requests.collect() for x in m.samples if x.name.endswith("_count")
    )
    assert 0 < calls < len(jobs)  # requests were merged (and so padded beside each other)
    worst = 0.0
    for texts, result in zip(jobs, results, strict=True):
        alone = np.stack([embedder.encode(text) for text in texts])
        worst = max(worst, float(np.abs(result.vectors - alone).max()))
    assert worst <= VECTOR_TOLERANCE[dtype]


def test_one_failing_or_too_long_request_never_fails_the_requests_merged_with_it(embedder: Any) -> None:
    from kvembed_rag.serve.batching import Batcher
    from kvembed_rag.serve.protocol import APIError

    batcher = Batcher(FlakyEmbedder(embedder), max_wait_s=0.05, max_input_tokens=MAX_INPUT_TOKENS)

    async def go() -> list[Any]:
        batcher.start()
        jobs = [["ok", "fine"], ["boom"], ["retrieval " * 300], ["also fine"]]
        results = await asyncio.gather(*(batcher.submit(t, "query") for t in jobs), return_exceptions=True)
        after = await batcher.submit(["after"], "document")  # the dispatcher is still alive
        await batcher.stop()
        return [*results, after]

    ok, boom, too_long, fine, after = asyncio.run(go())
    np.testing.assert_allclose(ok.vectors, embedder.encode(["ok", "fine"], "query"), atol=ATOL)
    np.testing.assert_allclose(fine.vectors, embedder.encode(["also fine"], "query"), atol=ATOL)
    np.testing.assert_allclose(after.vectors, embedder.encode(["after"]), atol=ATOL)
    assert isinstance(boom, APIError) and boom.status == 500 and "the model broke" in boom.message
    assert isinstance(too_long, APIError) and too_long.status == 400 and too_long.code == "input_too_long"
    assert ok.tokens == [len(e.ids) for e in embedder.tokenize(["ok", "fine"], "query")]
