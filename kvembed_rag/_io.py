"""Small file helpers shared by every module that persists something: the cache root, atomic writes, hashes.

Atomic means: write a temporary file beside the target, flush it, then ``os.replace`` it over the target, so a
reader (or a process killed mid-write) never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """``$KVEMBED_CACHE`` or ``~/.cache/kvembed-rag``: where models, layer selections and eval vectors are kept."""
    env = os.environ.get("KVEMBED_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kvembed-rag"


def write_bytes_atomically(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Replace ``path`` by ``data`` in one step (``fsync`` first where a crash must not lose the write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            if fsync:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomically(path: Path, payload: Any, *, fsync: bool = False) -> None:
    """:func:`write_bytes_atomically` of ``payload`` as indented JSON."""
    write_bytes_atomically(path, json.dumps(payload, indent=1).encode("utf-8"), fsync=fsync)


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path, *, memoise: bool = True) -> str:
    """sha256 of a file's bytes, memoised by (path, size, mtime) within the process unless ``memoise=False``."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memoise and key in _HASHES:
        return _HASHES[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    if memoise:
        _HASHES[key] = digest.hexdigest()
    return digest.hexdigest()


def read_text_file(path: str | Path) -> str:
    """A file's text. The one policy for input files (index, embed, calibration): UTF-8 or refused.

    Invalid bytes raise ``ValueError`` naming the file, the byte offset and the byte, rather than being
    replaced silently (a replaced byte changes the text that is embedded and its content hash).
    """
    file = Path(path)
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(
            f"{file}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line}) is invalid; "
            "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) or leave it out"
        ) from None
