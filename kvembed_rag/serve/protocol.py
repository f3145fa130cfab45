"""OpenAI's embeddings API: request validation, the role convention, responses and error bodies.

Role convention: documents by default. A request selects the query role either with the field
``"input_type": "query"`` (``"search_query"`` too; ``"document"`` / ``"search_document"`` for documents) or,
for clients that cannot send extra fields, with the model id ``NAME:query`` (``NAME:document`` also exists).
Both forms together must agree.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..prompts import Role

ROLE_ALIASES: dict[str, Role] = {
    "document": "document",
    "search_document": "document",
    "query": "query",
    "search_query": "query",
}
ENCODING_FORMATS = ("float", "base64")

#: turns (n, dim) unit vectors into (n, dimensions) ones; None today: no post-processing stage reduces yet
DimensionReducer = Callable[[np.ndarray, int], np.ndarray]


class APIError(Exception):
    """An error answered as OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class EmbeddingRequest:
    """A validated ``POST /v1/embeddings`` body."""

    texts: list[str]
    model: str
    role: Role
    encoding_format: str
    dimensions: int | None


def model_ids(name: str) -> dict[str, Role]:
    """Every model id the server answers to, with the role each selects."""
    return {name: "document", f"{name}:document": "document", f"{name}:query": "query"}


def parse_request(payload: object, *, model_name: str, max_inputs: int) -> EmbeddingRequest:
    """Validate a decoded JSON body; raise :class:`APIError` naming the offending field.

    Unknown fields are ignored (clients add their own), as other OpenAI-compatible servers do.
    """
    if not isinstance(payload, dict):
        raise APIError(400, f"the request body must be a JSON object; got a JSON {_json_type(payload)}")
    if "input" not in payload:
        raise APIError(400, "missing required field 'input' (a string or a list of strings)", param="input")
    if "model" not in payload:
        raise APIError(400, f"missing required field 'model' (use {model_name!r})", param="model")
    texts = _parse_input(payload["input"], max_inputs)

    model = payload["model"]
    if not isinstance(model, str):
        raise APIError(400, f"'model' must be a string; got a JSON {_json_type(model)}", param="model")
    ids = model_ids(model_name)
    if model not in ids:
        raise APIError(
            404,
            f"the model {model!r} does not exist on this server; it serves {sorted(ids)}",
            param="model",
            code="model_not_found",
        )
    role = ids[model]

    input_type = payload.get("input_type")
    if input_type is not None:
        if not isinstance(input_type, str) or input_type not in ROLE_ALIASES:
            raise APIError(
                400, f"'input_type' must be one of {sorted(ROLE_ALIASES)}; got {input_type!r}", param="input_type"
            )
        wanted = ROLE_ALIASES[input_type]
        if model != model_name and wanted != role:
            raise APIError(
                400,
                f"'input_type'={input_type!r} contradicts the model id {model!r}; send one of them",
                param="input_type",
            )
        role = wanted

    encoding_format = payload.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in ENCODING_FORMATS:
        raise APIError(
            400,
            f"'encoding_format' must be 'float' or 'base64'; got {encoding_format!r}",
            param="encoding_format",
        )

    dimensions = payload.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise APIError(400, f"'dimensions' must be a positive integer; got {dimensions!r}", param="dimensions")

    user = payload.get("user")
    if user is not None and not isinstance(user, str):
        raise APIError(400, f"'user' must be a string; got a JSON {_json_type(user)}", param="user")
    return EmbeddingRequest(texts, model, role, str(encoding_format), dimensions)


def _parse_input(value: object, max_inputs: int) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise APIError(
            400, f"'input' must be a string or a list of strings; got a JSON {_json_type(value)}", param="input"
        )
    if not value:
        raise APIError(400, "'input' is an empty list; send at least one string", param="input")
    if len(value) > max_inputs:
        raise APIError(
            400,
            f"'input' has {len(value)} items; this server accepts at most {max_inputs} per request: split the batch",
            param="input",
            code="too_many_inputs",
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            hint = (
                " Token-id arrays are not accepted: their ids belong to the client's tokenizer, not the model's"
                " (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False) sends the text)."
                if isinstance(item, (int, list))
                else ""
            )
            raise APIError(
                400, f"'input[{i}]' must be a string; got a JSON {_json_type(item)}.{hint}", param=f"input[{i}]"
            )
    return list(value)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def check_dimensions(requested: int | None, dim: int, reducer: DimensionReducer | None) -> int | None:
    """The size to reduce to (None: keep the model's), or a 400 when nothing configured can reduce to it."""
    if requested is None or requested == dim:
        return None
    if reducer is None:
        raise APIError(
            400,
            f"'dimensions'={requested} is not available: the configured embedder returns {dim}-dimensional vectors "
            f"and has no post-processing stage that reduces them; omit 'dimensions' or pass {dim}",
            param="dimensions",
            code="unsupported_dimensions",
        )
    if requested > dim:
        raise APIError(
            400,
            f"'dimensions'={requested} exceeds the embedder's {dim} dimensions; pass at most {dim}",
            param="dimensions",
            code="unsupported_dimensions",
        )
    return requested


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """One embedding as JSON floats, or as base64 of little-endian float32 (what OpenAI's clients decode)."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


def embeddings_response(
    vectors: np.ndarray,
    *,
    model: str,
    encoding_format: str,
    prompt_tokens: int,
    role: Role,
    truncated: list[int],
    fingerprint: str,
) -> dict[str, Any]:
    """OpenAI's response object, plus a ``kvembed`` field (role, fingerprint, truncated input indices)."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(vector, encoding_format)}
            for i, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        "kvembed": {"role": role, "fingerprint": fingerprint, "truncated": truncated},
    }
