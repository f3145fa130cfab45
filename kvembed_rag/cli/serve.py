"""``kvembed-rag serve``: its flags and what it runs (uvicorn on this machine, or Ray Serve replicas)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import sys
from collections.abc import Iterator
from functools import partial
from typing import Any

from ..serve.settings import API_KEY_ENV, ServeSettings

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

NAME = "serve"
HELP = "Serve the embedder over HTTP: OpenAI's /v1/embeddings API."

EXAMPLES = EPILOG = f"""examples:
  kvembed-rag serve                                   # the default model on http://127.0.0.1:8000/v1
  KVEMBED_API_KEY=secret kvembed-rag serve --host 0.0.0.0 --port 8080 --max-length 2048
  kvembed-rag serve --engine ray --replicas 4 --address auto
Clients: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=...).embeddings.create(model="kvembed-rag", input=[...]).
Queries: send "input_type": "query", or use the model id "kvembed-rag:query" (documents are the default).
The API key comes from --api-key or the {API_KEY_ENV} environment variable (Bearer token)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve flags; the embedder flags come from the CLI's shared model options."""
    from .options import add_model_options

    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    group.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    group.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else no key)",
    )
    group.add_argument(
        "--served-model-name",
        default="kvembed-rag",
        help="model id clients send; NAME:query selects the query role (default kvembed-rag)",
    )
    group.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, help="request body limit (default 8 MiB)")
    group.add_argument("--max-inputs", type=int, default=2048, help="inputs per request (default 2048, as OpenAI)")
    group.add_argument(
        "--max-input-tokens",
        type=int,
        default=None,
        help="reject inputs longer than this many prompted tokens (default: none; inputs over --max-length are "
        "truncated and reported in the X-KVEmbed-Truncated header)",
    )
    group.add_argument("--max-batch-inputs", type=int, default=512, help="inputs merged into one model call (512)")
    group.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait to merge requests (default 5)")
    group.add_argument(
        "--max-pending-inputs", type=int, default=65_536, help="queued inputs before answering 503 (default 65536)"
    )
    group.add_argument(
        "--graceful-timeout", type=float, default=30.0, help="seconds shutdown waits for in-flight requests (30)"
    )
    group.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    ray = parser.add_argument_group("engine")
    ray.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="one process with uvicorn (default) or Ray Serve replicas (pip install 'kvembed-rag[ray]')",
    )
    ray.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas, one model each (default 1)")
    ray.add_argument("--address", default=None, help="Ray cluster: 'auto' or 'ray://head:10001' (default: a local one)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs reserved per replica (default 1)")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="Ray GPUs per replica (default 0)")
    add_model_options(parser)
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """A validated :class:`ServeSettings` from the parsed flags (and ``KVEMBED_API_KEY``)."""
    return ServeSettings(
        host=args.host,
        port=args.port,
        model_name=args.served_model_name,
        api_key=args.api_key or ServeSettings.api_key_from_env(),
        max_body_bytes=args.max_body_bytes,
        max_inputs=args.max_inputs,
        max_input_tokens=args.max_input_tokens,
        max_batch_inputs=args.max_batch_inputs,
        max_wait_ms=args.max_wait_ms,
        max_pending_inputs=args.max_pending_inputs,
        graceful_timeout_s=args.graceful_timeout,
    )


def load_configured(config: dict[str, Any]) -> Any:
    """Load the embedder of a ``KVEmbedConfig.to_dict()`` (what travels to a Ray Serve replica)."""
    from ..config import KVEmbedConfig
    from ..embedder import KVEmbedder
    from .options import quiet_libraries

    quiet_libraries(verbose=False)
    return KVEmbedder.from_pretrained(KVEmbedConfig.from_dict(config))


def model_loader(args: argparse.Namespace) -> Any:
    """A picklable zero-argument callable that loads the embedder the flags describe (validated now)."""
    from .options import config_from_args, validate_model_args

    validate_model_args(args)
    return partial(load_configured, config_from_args(args).to_dict())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; in-flight requests finish first. Exit 1 if the model fails to load."""
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"kvembed-rag serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.replicas < 1:
        print(f"kvembed-rag serve: --replicas must be >= 1; got {args.replicas}", file=sys.stderr)
        return EXIT_USAGE
    if not _is_loopback(settings.host) and settings.api_key is None:
        logger.warning(
            "serving on %s without an API key: anyone who reaches this port can use the model; set --api-key or %s",
            settings.host,
            API_KEY_ENV,
        )
    from ..serve.batching import quiet_duplicate_truncation_warnings  # the web stack: only when serving
    from .options import UsageError

    quiet_duplicate_truncation_warnings()
    try:  # a bad embedder option is a usage error now, not a load failure after binding
        loader = model_loader(args)
    except UsageError as exc:
        print(f"kvembed-rag serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.engine == "ray":
        from ..serve.ray_engine import serve_on_ray

        try:
            import ray.serve  # noqa: F401
        except ImportError:
            print('kvembed-rag serve: --engine ray needs Ray Serve: pip install "kvembed-rag[ray]"', file=sys.stderr)
            return EXIT_FAILURE
        return serve_on_ray(
            loader,
            settings,
            replicas=args.replicas,
            address=args.address,
            cpus_per_replica=args.cpus_per_replica,
            gpus_per_replica=args.gpus_per_replica,
        )
    return _serve_local(loader, settings, log_level=args.log_level)


def _graceful_server_class() -> Any:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown (the process dies of the signal);
        the CLI instead returns its exit code: 0 once every in-flight request was answered."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                captured = getattr(self, "_captured_signals", None)
                if isinstance(captured, list):
                    if captured:
                        logger.warning("stopped by signal %s after finishing in-flight requests", captured[-1])
                    captured.clear()

    return GracefulServer


def _serve_local(loader: Any, settings: ServeSettings, *, log_level: str = "info") -> int:
    try:
        import uvicorn
    except ImportError:
        print(
            'kvembed-rag serve: the server needs FastAPI and uvicorn: pip install "kvembed-rag[serve]"', file=sys.stderr
        )
        return EXIT_FAILURE

    from ..serve.app import create_app

    app = create_app(loader, settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.graceful_timeout_s) or None,
        access_log=log_level == "debug",
        server_header=False,
    )
    server = _graceful_server_class()(config)

    def stop(exc: BaseException) -> None:
        server.should_exit = True

    app.state.kvembed.on_load_failure = stop
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind the port (it has logged why)
        return int(exc.code or EXIT_FAILURE)
    if app.state.kvembed.error is not None:
        print(f"kvembed-rag serve: error: the model failed to load: {app.state.kvembed.error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
