"""Dynamic batching: concurrent requests merged into one ``embedder.encode(texts, role)`` call per role.

One dispatcher coroutine takes the first queued request, waits at most ``max_wait_s`` for others (less when
``max_batch_inputs`` fills first), and runs the merged texts on a single model thread. While the model
runs, new requests queue up, so under load the next call is as large as the load makes it: throughput
approaches one big in-process call, and the event loop never waits on the model. The embedder then
splits each merged call into its own token-budget batches (sorted by length).
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..prompts import Role
from .metrics import Metrics
from .protocol import APIError

logger = logging.getLogger(__name__)


@dataclass
class EncodeResult:
    """One request's vectors with what its response reports."""

    vectors: np.ndarray  # (n, dim) float32, unit norm
    tokens: list[int]  # prompted tokens per input as fed to the model (after any truncation)
    truncated: list[int]  # indices of inputs cut at the embedder's max_length

    @property
    def prompt_tokens(self) -> int:
        return sum(self.tokens)


@dataclass
class _Item:
    texts: list[str]
    role: Role
    future: asyncio.Future[EncodeResult]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queue in front of one embedder. ``await submit(texts, role)`` from any request handler.

    ``embedder`` needs ``tokenize(texts, role)`` (ids and ``truncated_by`` per text) and ``encode(texts, role)``.
    Inputs whose prompted length (before truncation) exceeds ``max_input_tokens`` fail their request with a
    400; one failing input never fails the other requests it was merged with.
    """

    def __init__(
        self,
        embedder: Any,
        *,
        max_batch_inputs: int = 512,
        max_wait_s: float = 0.005,
        max_pending_inputs: int = 65_536,
        max_input_tokens: int | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.embedder = embedder
        self.max_batch_inputs = max_batch_inputs
        self.max_wait_s = max_wait_s
        self.max_pending_inputs = max_pending_inputs
        self.max_input_tokens = max_input_tokens
        self.metrics = metrics or Metrics()
        self._queue: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending_inputs = 0
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the dispatcher on the running event loop (idempotent)."""
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        # one model thread: the embedder holds one lock per model anyway, and a single thread keeps
        # calls in arrival order instead of racing for that lock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvembed-model")
        self._task = asyncio.get_running_loop().create_task(self._dispatch(), name="kvembed-batcher")

    async def stop(self) -> None:
        """Refuse new work, finish everything queued, then stop the model thread."""
        self._stopping = True
        if self._task is None:
            return
        assert self._wakeup is not None
        self._wakeup.set()
        await self._task
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def pending_inputs(self) -> int:
        return self._pending_inputs

    # ------------------------------------------------------------------ requests
    async def submit(self, texts: Sequence[str], role: Role) -> EncodeResult:
        """Embed ``texts`` as ``role`` together with whatever else is queued; raises :class:`APIError`."""
        if self._stopping or self._task is None or self._wakeup is None:
            raise APIError(503, "the server is shutting down; retry on another instance", type="server_error")
        if self._pending_inputs and self._pending_inputs + len(texts) > self.max_pending_inputs:
            raise APIError(
                503,
                f"the server is overloaded ({self._pending_inputs} inputs queued); retry after a short wait",
                type="server_error",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
        future: asyncio.Future[EncodeResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(list(texts), role, future))
        self._set_pending(self._pending_inputs + len(texts))
        self._wakeup.set()
        try:
            return await future
        finally:
            self._set_pending(self._pending_inputs - len(texts))

    def _set_pending(self, value: int) -> None:
        self._pending_inputs = value
        self.metrics.pending.set(value)

    # ------------------------------------------------------------------ dispatcher
    async def _dispatch(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            items = [self._queue.popleft()]
            count = len(items[0].texts)
            deadline = loop.time() + self.max_wait_s
            while count < self.max_batch_inputs:
                if self._queue:
                    if count + len(self._queue[0].texts) > self.max_batch_inputs:
                        break  # the next request starts the next call
                    item = self._queue.popleft()
                    items.append(item)
                    count += len(item.texts)
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or self._stopping:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            live = [item for item in items if not item.future.done()]  # drop requests whose client went away
            for role in ("document", "query"):
                group = [item for item in live if item.role == role]
                if not group:
                    continue
                try:
                    await self._run_group(loop, group, role)
                except Exception as exc:  # never leave a request waiting, and keep dispatching
                    for item in group:
                        if not item.future.done():
                            item.future.set_exception(_server_error(exc))

    async def _run_group(self, loop: asyncio.AbstractEventLoop, group: list[_Item], role: Role) -> None:
        assert self._executor is not None
        texts = [item.texts for item in group]
        try:
            outcomes = await loop.run_in_executor(self._executor, self._encode_group, texts, role)
        except Exception as exc:  # a failure of the whole call: retry each request alone to isolate it
            if len(group) == 1:
                outcomes = [_server_error(exc)]
            else:
                logger.warning("a merged call of %d requests failed (%s); retrying them one by one", len(group), exc)
                outcomes = []
                for item in group:
                    try:
                        outcomes += await loop.run_in_executor(self._executor, self._encode_group, [item.texts], role)
                    except Exception as single:
                        outcomes.append(_server_error(single))
        for item, outcome in zip(group, outcomes, strict=True):
            if item.future.done():
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

    def _encode_group(self, requests: list[list[str]], role: Role) -> list[EncodeResult | APIError]:
        """On the model thread: tokenize (usage, limits, truncation), then one encode() of the accepted texts."""
        started = time.perf_counter()
        flat = [text for texts in requests for text in texts]
        encoded = self.embedder.tokenize(flat, role)
        outcomes: list[EncodeResult | APIError | None] = []
        accepted: list[tuple[int, int, int]] = []  # (request, start, stop) in `flat`
        start = 0
        for r, texts in enumerate(requests):
            stop = start + len(texts)
            outcomes.append(self._check_tokens(encoded[start:stop]))
            if outcomes[-1] is None:
                accepted.append((r, start, stop))
            start = stop
        keep = [text for _, a, b in accepted for text in flat[a:b]]
        vectors = self.embedder.encode(keep, role) if keep else np.zeros((0, 0), dtype=np.float32)
        offset = 0
        tokens_total = 0
        for r, a, b in accepted:
            tokens = [len(e.ids) for e in encoded[a:b]]
            truncated = [i for i, e in enumerate(encoded[a:b]) if e.truncated_by]
            outcomes[r] = EncodeResult(vectors[offset : offset + (b - a)], tokens, truncated)
            offset += b - a
            tokens_total += sum(tokens)
            self.metrics.truncated.inc(len(truncated))
        if keep:
            self.metrics.batch_inputs.observe(len(keep))
            self.metrics.batch_requests.observe(len(accepted))
            self.metrics.batch_tokens.observe(tokens_total)
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            self.metrics.inputs.labels(role).inc(len(keep))
            self.metrics.tokens.labels(role).inc(tokens_total)
        return [outcome for outcome in outcomes if outcome is not None]

    def _check_tokens(self, encoded: list[Any]) -> APIError | None:
        if self.max_input_tokens is None:
            return None
        for i, item in enumerate(encoded):
            length = len(item.ids) + item.truncated_by
            if length > self.max_input_tokens:
                return APIError(
                    400,
                    f"'input[{i}]' is {length} tokens with the prompt; this server accepts at most "
                    f"{self.max_input_tokens} tokens per input: shorten or split it",
                    param=f"input[{i}]",
                    code="input_too_long",
                )
        return None


def _server_error(exc: BaseException) -> APIError:
    logger.error("embedding failed: %s: %s", type(exc).__name__, exc)
    return APIError(500, f"embedding failed: {type(exc).__name__}: {exc}", type="server_error")


def quiet_duplicate_truncation_warnings() -> None:
    """In a server process each response reports its truncated inputs and the embedder logs them, so the
    Python warning the embedder also raises (attributed to the batcher's call) would only repeat them."""
    from ..errors import TruncationWarning

    warnings.filterwarnings("ignore", category=TruncationWarning, module=r"kvembed_rag\.serve\.batching")
