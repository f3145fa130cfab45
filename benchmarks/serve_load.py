"""Throughput of ``kvembed-rag serve`` under many small concurrent requests against one in-process call.

    python benchmarks/serve_load.py [--model default] [--texts 1024] [--concurrency 64] [--json out.json]

The texts are STS-B dev sentences (short: ~10-20 tokens each) read from ../shared/data, or generated
sentences when that folder is absent. First one in-process ``encode`` of all texts (after a warm-up),
then the same texts through the server: ``--concurrency`` clients, each sending requests of 1 to
``--max-request`` texts (base64, as the OpenAI client asks) until every text was sent once. The server
runs on a thread of this process over the same loaded model; the clients run in a separate process, so
their HTTP and decoding work does not compete for this process's GIL. Prints (and writes) one JSON object:
texts/s both ways, their ratio, request latency p50/p99, the mean number of inputs per model call, and
the largest difference between a served vector and the in-process one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import multiprocessing
import random
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_texts(n: int, seed: int = 0) -> tuple[list[str], str]:
    """``n`` distinct short sentences from STS-B dev, else generated ones; and where they came from."""
    path = SHARED / "stsb" / "dev.tsv"
    if path.is_file():
        with path.open(encoding="utf-8") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
        texts = sorted({s for row in rows for s in row[:2] if s.strip()})
        source = str(path)
    else:
        rng = random.Random(seed)
        words = ["the", "a", "model", "text", "query", "document", "layer", "token", "prefix", "attention", "essay"]
        texts = sorted({" ".join(rng.choice(words) for _ in range(rng.randint(6, 18))) for _ in range(4 * n)})
        source = "generated"
    random.Random(seed).shuffle(texts)
    return texts[:n], source


def plan_requests(n: int, max_request: int, seed: int = 0) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` slices of 1..max_request texts covering ``range(n)`` once."""
    rng = random.Random(seed)
    slices, start = [], 0
    while start < n:
        stop = min(n, start + rng.randint(1, max_request))
        slices.append((start, stop))
        start = stop
    return slices


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run_clients(url: str, texts: list[str], slices: list[tuple[int, int]], concurrency: int) -> dict[str, Any]:
    """In a child process: ``concurrency`` async clients; the wall time, latencies and the decoded vectors."""
    import httpx
    import numpy as np

    async def go() -> dict[str, Any]:
        queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        for item in slices:
            queue.put_nowait(item)
        vectors: dict[int, Any] = {}
        latencies: list[float] = []
        errors: list[str] = []
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:

            async def worker() -> None:
                while not queue.empty():
                    a, b = queue.get_nowait()
                    body = {"input": texts[a:b], "model": "kvembed-rag", "encoding_format": "base64"}
                    started = time.perf_counter()
                    response = await http.post("/v1/embeddings", json=body)
                    latencies.append(time.perf_counter() - started)
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                        continue
                    for item in response.json()["data"]:
                        vectors[a + item["index"]] = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall = time.perf_counter() - started
        matrix = np.stack([vectors[i] for i in range(len(texts))]) if len(vectors) == len(texts) else None
        return {"wall": wall, "latencies": latencies, "errors": errors, "vectors": matrix}

    return asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-request", type=int, default=4, help="texts per request: 1 to this (default 4)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()

    import numpy as np
    import uvicorn

    from kvembed_rag import KVEmbedder
    from kvembed_rag.serve.app import create_app
    from kvembed_rag.serve.settings import ServeSettings

    texts, source = load_texts(args.texts)
    slices = plan_requests(len(texts), args.max_request)
    embedder = KVEmbedder.from_pretrained(args.model)
    tokens = sum(len(e.ids) for e in embedder.tokenize(texts))
    embedder.encode(texts[:64])  # warm-up: first-call allocations and kernel selection
    started = time.perf_counter()
    reference = embedder.encode(texts)
    in_process = time.perf_counter() - started

    settings = ServeSettings(max_wait_ms=args.max_wait_ms)
    app = create_app(embedder, settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pool.apply(run_clients, (url, texts[:32], plan_requests(32, args.max_request, 1), 8))  # warm-up
            batches = app.state.kvembed.metrics.batch_inputs.collect()[0].samples
            calls_before = next(s.value for s in batches if s.name.endswith("_count"))
            inputs_before = next(s.value for s in batches if s.name.endswith("_sum"))
            result = pool.apply(run_clients, (url, texts, slices, args.concurrency))
        batches = app.state.kvembed.metrics.batch_inputs.collect()[0].samples
        calls = next(s.value for s in batches if s.name.endswith("_count")) - calls_before
        inputs = next(s.value for s in batches if s.name.endswith("_sum")) - inputs_before
    finally:
        server.should_exit = True
        thread.join(30)

    served = result["vectors"]
    latencies = result["latencies"]
    out = {
        "model": args.model,
        "texts": len(texts),
        "source": source,
        "tokens": tokens,
        "requests": len(slices),
        "concurrency": args.concurrency,
        "max_request": args.max_request,
        "max_wait_ms": args.max_wait_ms,
        "in_process_texts_per_s": len(texts) / in_process,
        "served_texts_per_s": len(texts) / result["wall"],
        "ratio": in_process / result["wall"],
        "latency_p50_ms": 1000 * statistics.median(latencies),
        "latency_p99_ms": 1000 * percentile(latencies, 99),
        "model_calls": int(calls),
        "mean_inputs_per_call": inputs / max(calls, 1),
        "errors": len(result["errors"]),
        "max_abs_diff": float(np.abs(served - reference).max()) if served is not None else None,
    }
    out = {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
    print(json.dumps(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if result["errors"]:
        print("first errors:", result["errors"][:3])
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
