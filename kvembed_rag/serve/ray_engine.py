"""The same app on Ray Serve: N replicas, each loading the model once, behind Ray's HTTP proxy.

Each replica builds :func:`create_app` over its own embedder (Ray's deferred ingress), so batching, limits,
errors and the API key behave exactly as on one machine; the proxy spreads requests over replicas. A
replica counts as started only after its model loaded, so Ray routes nothing to it before. ``/metrics``
answers from whichever replica the request reached (Ray Serve exports its own cluster-wide metrics).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from .settings import ServeSettings

logger = logging.getLogger(__name__)

APP_NAME = "kvembed-rag"


def _require_serve() -> Any:
    try:
        from ray import serve
    except ImportError as exc:
        raise ImportError('--engine ray needs Ray Serve: pip install "kvembed-rag[ray]"') from exc
    return serve


def build_application(
    loader: Callable[[], Any],
    settings: ServeSettings,
    *,
    replicas: int = 1,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
) -> Any:
    """A bound Ray Serve application of ``replicas`` copies of the server; ``serve.run`` it."""
    serve = _require_serve()

    class KVEmbedReplica:
        """One replica: the embedder, loaded in the constructor, and the app built over it."""

        def __init__(self, loader: Callable[[], Any], settings: ServeSettings) -> None:
            from .app import create_app
            from .batching import quiet_duplicate_truncation_warnings

            quiet_duplicate_truncation_warnings()
            self._app = create_app(loader(), settings)

        def __serve_build_asgi_app__(self) -> Any:
            return self._app

    deployment = serve.deployment(
        serve.ingress()(KVEmbedReplica),
        name="KVEmbedReplica",
        num_replicas=replicas,
        # the batcher queues and merges requests, so let many wait at a replica instead of Ray's default 5
        max_ongoing_requests=max(64, settings.max_pending_inputs // 64),
        graceful_shutdown_timeout_s=settings.graceful_timeout_s,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
    )
    return deployment.bind(loader, settings)


def start(
    loader: Callable[[], Any],
    settings: ServeSettings,
    *,
    replicas: int = 1,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
) -> None:
    """Deploy on the connected Ray cluster and return once every replica has loaded its model."""
    serve = _require_serve()
    serve.start(http_options={"host": settings.host, "port": settings.port})
    app = build_application(
        loader, settings, replicas=replicas, cpus_per_replica=cpus_per_replica, gpus_per_replica=gpus_per_replica
    )
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)


def serve_on_ray(
    loader: Callable[[], Any],
    settings: ServeSettings,
    *,
    replicas: int = 1,
    address: str | None = None,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
) -> int:
    """The CLI's ``--engine ray``: connect (or start a local cluster), deploy, serve until SIGINT/SIGTERM."""
    import ray

    serve = _require_serve()
    if address is None:  # a local cluster, its processes on loopback only
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
    else:
        ray.init(address=address)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        start(
            loader,
            settings,
            replicas=replicas,
            cpus_per_replica=cpus_per_replica,
            gpus_per_replica=gpus_per_replica,
        )
        logger.warning(
            "serving %d replica(s) on http://%s:%d/v1 (Ray Serve); Ctrl-C stops", replicas, settings.host, settings.port
        )
        stop.wait()
    except Exception as exc:
        logger.error("Ray Serve deployment failed: %s", exc)
        return 1
    finally:
        serve.shutdown()  # replicas drain their in-flight requests within graceful_shutdown_timeout_s
        ray.shutdown()
    return 0
