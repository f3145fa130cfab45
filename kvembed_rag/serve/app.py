"""The ASGI app: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health``, ``GET /metrics``.

``create_app(embedder_or_factory, settings)`` takes a loaded embedder, or a zero-argument callable that
loads one. A factory runs on a thread after the server starts listening, so ``/health`` answers 503
("loading") until the model is ready, and 503 ("error") with the reason if loading failed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from .batching import Batcher
from .metrics import Metrics
from .protocol import APIError, DimensionReducer, check_dimensions, embeddings_response, model_ids, parse_request
from .settings import ServeSettings

logger = logging.getLogger(__name__)

#: responses with more floats than this are serialised on a worker thread, off the event loop
_OFFLOAD_FLOATS = 64 * 1024
_OFFLOAD_BYTES = 256 * 1024
TRUNCATED_HEADER = "X-KVEmbed-Truncated"


@dataclass
class ServerState:
    """What the handlers share: the embedder once loaded, its batcher, readiness and the load error."""

    settings: ServeSettings
    metrics: Metrics
    reducer: DimensionReducer | None = None
    embedder: Any = None
    batcher: Batcher | None = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    on_load_failure: Callable[[BaseException], None] | None = None  # the CLI stops the server with it
    _load_task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.batcher is not None and self.error is None

    def attach(self, embedder: Any) -> None:
        settings = self.settings
        self.embedder = embedder
        self.batcher = Batcher(
            embedder,
            max_batch_inputs=settings.max_batch_inputs,
            max_wait_s=settings.max_wait_ms / 1000,
            max_pending_inputs=settings.max_pending_inputs,
            max_input_tokens=settings.max_input_tokens,
            metrics=self.metrics,
        )
        self.batcher.start()
        self.metrics.ready.set(1)
        logger.info("model ready: %r (dim %d)", embedder, embedder.dim)


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class _CountRequests:
    """ASGI middleware counting HTTP responses by route and status (pure ASGI: no body buffering)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in _ROUTES else "other"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


_ROUTES = {"/v1/embeddings", "/v1/models", "/health", "/metrics", "/embeddings", "/models"}


def create_app(
    embedder_or_factory: Any,
    settings: ServeSettings | None = None,
    *,
    reducer: DimensionReducer | None = None,
) -> FastAPI:
    """The embedding server's app over a loaded embedder or a zero-argument factory that loads one.

    ``reducer(vectors, dimensions)`` is where a post-processing stage that can shorten vectors plugs in;
    without one, only ``dimensions`` equal to the model's width is accepted.
    """
    settings = settings or ServeSettings()
    state = ServerState(settings=settings, metrics=Metrics(), reducer=reducer)
    is_factory = callable(embedder_or_factory) and not hasattr(embedder_or_factory, "encode")

    async def load(factory: Callable[[], Any]) -> None:
        try:
            embedder = await asyncio.to_thread(factory)
        except BaseException as exc:  # report any failure on /health, then let the owner decide
            state.error = f"{type(exc).__name__}: {exc}"
            logger.error("loading the model failed: %s", state.error)
            if state.on_load_failure is not None:
                state.on_load_failure(exc)
            if not isinstance(exc, Exception):
                raise
            return
        state.attach(embedder)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if is_factory:
            state._load_task = asyncio.get_running_loop().create_task(load(embedder_or_factory))
        else:
            state.attach(embedder_or_factory)
        try:
            yield
        finally:  # the server has stopped accepting and finished its connections: drain the queue too
            if state._load_task is not None and not state._load_task.done():
                state._load_task.cancel()  # the thread finishes on its own; nothing waits for it
            if state.batcher is not None:
                await state.batcher.stop()
            state.metrics.ready.set(0)

    app = FastAPI(
        title="kvembed-rag embedding server",
        version=__version__,
        description="OpenAI-compatible embeddings from a frozen decoder LLM with KV-Embedding.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.kvembed = state
    app.add_middleware(_CountRequests, metrics=state.metrics)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        message = (
            f"no such endpoint: {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        )
        return _error_response(APIError(exc.status_code, str(message), code=code))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}", type="server_error"))

    def authorize(request: Request) -> None:
        expected = settings.api_key
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(
                401,
                "missing API key: send the header 'Authorization: Bearer YOUR_KEY'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # constant-time compare of the raw header bytes (Starlette decoded them as latin-1) with the UTF-8 key
        if not hmac.compare_digest(token.strip().encode("latin-1", "replace"), expected.encode("utf-8")):
            raise APIError(
                401, "incorrect API key provided", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
            )

    def ready_batcher() -> Batcher:
        if state.error is not None:
            raise APIError(503, f"the model failed to load: {state.error}", type="server_error", code="model_not_ready")
        if state.batcher is None:
            raise APIError(
                503,
                "the model is still loading; retry when GET /health answers 200",
                type="server_error",
                code="model_not_ready",
                headers={"Retry-After": "2"},
            )
        return state.batcher

    async def read_body(request: Request) -> bytes:
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        too_big = APIError(
            413,
            f"the request body is larger than this server's limit of {limit:,} bytes: send fewer or shorter inputs",
            code="body_too_large",
        )
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():  # also bounds chunked bodies without a Content-Length
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    def decode_json(body: bytes) -> Any:
        if not body:
            raise APIError(400, "the request body is empty; send a JSON object with 'input' and 'model'")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise APIError(
                400, f"the request body is not valid UTF-8 (byte {exc.start}: {exc.reason}); send UTF-8 JSON"
            ) from exc
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise APIError(
                400, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc

    async def embeddings(request: Request) -> Response:
        started = time.perf_counter()
        authorize(request)
        batcher = ready_batcher()
        body = await read_body(request)
        payload = await asyncio.to_thread(decode_json, body) if len(body) > _OFFLOAD_BYTES else decode_json(body)
        parsed = parse_request(payload, model_name=settings.model_name, max_inputs=settings.max_inputs)
        embedder = state.embedder
        # an embedder whose post-processing ends in ordered principal directions (@DIM) reduces itself
        reducer = state.reducer or (embedder.reduce_dimensions if getattr(embedder, "reducible", False) else None)
        reduce_to = check_dimensions(parsed.dimensions, embedder.dim, reducer)
        result = await batcher.submit(parsed.texts, parsed.role)
        vectors = result.vectors
        if reduce_to is not None and reducer is not None:
            vectors = reducer(vectors, reduce_to)

        def render() -> bytes:
            response = embeddings_response(
                vectors,
                model=parsed.model,
                encoding_format=parsed.encoding_format,
                prompt_tokens=result.prompt_tokens,
                role=parsed.role,
                truncated=result.truncated,
                fingerprint=embedder.fingerprint,
            )
            return json.dumps(response, separators=(",", ":")).encode()

        content = await asyncio.to_thread(render) if vectors.size > _OFFLOAD_FLOATS else render()
        headers = {TRUNCATED_HEADER: str(len(result.truncated))}
        state.metrics.latency.observe(time.perf_counter() - started)
        return Response(content, media_type="application/json", headers=headers)

    def model_cards() -> list[dict[str, Any]]:
        embedder = state.embedder
        cards = []
        for model_id, role in model_ids(settings.model_name).items():
            card: dict[str, Any] = {
                "id": model_id,
                "object": "model",
                "created": int(state.started),
                "owned_by": "kvembed-rag",
                "kvembed": {"role": role, "ready": state.ready},
            }
            if embedder is not None:
                card["kvembed"].update(
                    dim=embedder.dim,
                    max_length=embedder.max_length,
                    fingerprint=embedder.fingerprint,
                    model=embedder.describe()["model"],
                )
            cards.append(card)
        return cards

    async def list_models(request: Request) -> JSONResponse:
        authorize(request)
        return JSONResponse({"object": "list", "data": model_cards()})

    async def get_model(request: Request) -> JSONResponse:
        authorize(request)
        model_id = request.path_params["model_id"]
        for card in model_cards():
            if card["id"] == model_id:
                return JSONResponse(card)
        raise APIError(
            404, f"the model {model_id!r} does not exist on this server", param="model", code="model_not_found"
        )

    async def health(request: Request) -> JSONResponse:
        if state.error is not None:
            return JSONResponse({"status": "error", "error": state.error}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        embedder = state.embedder
        return JSONResponse(
            {
                "status": "ok",
                "model": settings.model_name,
                "dim": embedder.dim,
                "fingerprint": embedder.fingerprint,
                "pending_inputs": state.batcher.pending_inputs if state.batcher else 0,
                "pid": os.getpid(),  # tells replicas apart behind a load balancer or Ray's proxy
            }
        )

    async def metrics(request: Request) -> Response:
        authorize(request)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    routes: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
        ("/v1/embeddings", embeddings, ["POST"]),
        ("/embeddings", embeddings, ["POST"]),  # clients configured with a base URL lacking /v1
        ("/v1/models", list_models, ["GET"]),
        ("/models", list_models, ["GET"]),
        ("/v1/models/{model_id:path}", get_model, ["GET"]),
        ("/health", health, ["GET"]),
        ("/metrics", metrics, ["GET"]),
    ]
    for path, handler, methods in routes:
        app.add_api_route(path, handler, methods=methods, include_in_schema=False)
    return app
