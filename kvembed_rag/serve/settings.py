"""Server settings: where to listen, the API key and every limit a request is checked against."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

#: environment variable read for the API key when none is given on the command line
API_KEY_ENV = "KVEMBED_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """Everything the HTTP layer needs besides the embedder. Defaults are safe for a loopback server.

    ``max_input_tokens`` rejects inputs whose prompted length exceeds it (``None``: no rejection); inputs
    longer than the embedder's ``max_length`` but within this limit are truncated, and every response says how
    many were (the ``X-KVEmbed-Truncated`` header and the ``kvembed.truncated`` field).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "kvembed-rag"  # the id clients send as "model"; NAME:query / NAME:document select the role
    api_key: str | None = field(default=None, repr=False)  # never printed with the settings
    max_body_bytes: int = 8 * 1024 * 1024
    max_inputs: int = 2048  # OpenAI's own per-request limit
    max_input_tokens: int | None = None
    max_batch_inputs: int = 512  # inputs merged into one encode() call at most
    max_wait_ms: float = 5.0  # how long a lone request waits for company before it runs
    max_pending_inputs: int = 65_536  # queued inputs beyond which new requests get 503 (back-pressure)
    graceful_timeout_s: float = 30.0  # how long shutdown waits for in-flight requests

    def __post_init__(self) -> None:
        positive = {
            "port": self.port,
            "max_body_bytes": self.max_body_bytes,
            "max_inputs": self.max_inputs,
            "max_batch_inputs": self.max_batch_inputs,
            "max_pending_inputs": self.max_pending_inputs,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if self.port > 65_535:
            raise ValueError(f"port must be at most 65535; got {self.port}")
        if self.max_input_tokens is not None and (
            isinstance(self.max_input_tokens, bool)
            or not isinstance(self.max_input_tokens, int)
            or self.max_input_tokens < 1
        ):
            raise ValueError(f"max_input_tokens must be a positive integer or None; got {self.max_input_tokens!r}")
        if not (0 <= self.max_wait_ms <= 1000):
            raise ValueError(f"max_wait_ms must be between 0 and 1000; got {self.max_wait_ms!r}")
        if self.graceful_timeout_s < 0:
            raise ValueError(f"graceful_timeout_s must be >= 0; got {self.graceful_timeout_s!r}")
        if not self.model_name or ":" in self.model_name or "?" in self.model_name:
            raise ValueError(
                f"model_name must be non-empty without ':' or '?' (they select the role); got {self.model_name!r}"
            )
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty; leave it unset to serve without a key")

    @staticmethod
    def api_key_from_env() -> str | None:
        """The key in ``KVEMBED_API_KEY``, or None when unset or empty."""
        return os.environ.get(API_KEY_ENV) or None
