"""One lookup for everything computed once and kept: shipped with the package, else cached on disk, else computed.

Layer selections, post-processing statistics, the bf16 verdict of a CPU and evaluation vectors all go through
:func:`cached_artifact`: the cache file is named by a hash of the key, a damaged file is reported (a
``RuntimeWarning`` naming it) and recomputed, two processes computing the same artifact wait for each other on a file
lock instead of both doing the work, and a read-only cache only costs a recomputation next time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ._io import cache_root

T = TypeVar("T")


def artifact_path(kind: str, key: Any, suffix: str, *, digits: int = 24) -> Path:
    """``$KVEMBED_CACHE/<kind>/<sha256 of the key>[:digits]<suffix>``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:digits]
    return cache_root() / kind / f"{digest}{suffix}"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path.lock`` (POSIX ``flock``; elsewhere, or on a read-only cache, no lock)."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 - held for the block
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def cached_artifact(
    kind: str,
    key: Any,
    *,
    suffix: str,
    read: Callable[[Path], T],
    write: Callable[[Path, T], Any],
    compute: Callable[[], T],
    shipped: Callable[[], T | None] | None = None,
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, TypeError),
    use_cache: bool = True,
    path: Path | None = None,
) -> tuple[T, str]:
    """The artifact ``key`` names and where it came from: ``"shipped"``, ``"cached"`` or ``"computed"``.

    ``read`` raises one of ``errors`` for a file it cannot use (damaged, another key, an older format): the file is
    then recomputed and replaced, with a warning. ``use_cache=False`` computes and writes nothing.
    """
    if use_cache and shipped is not None:
        found = shipped()
        if found is not None:
            return found, "shipped"
    if not use_cache:
        return compute(), "computed"
    target = path or artifact_path(kind, key, suffix)

    def cached() -> T | None:
        if not target.is_file():
            return None
        try:
            return read(target)
        except errors as exc:
            warnings.warn(
                f"{kind} cache {target} is unusable ({exc}): it is unreadable or stale; recomputing it",
                RuntimeWarning,
                stacklevel=4,
            )
            return None

    value = cached()
    if value is not None:
        return value, "cached"
    with file_lock(target):
        if target.is_file() and os.path.getsize(target):  # another process may have written it while we waited
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # already reported above
                value = cached()
            if value is not None:
                return value, "cached"
        value = compute()
        with contextlib.suppress(OSError):  # a read-only cache: compute again next time, still correct
            write(target, value)
    return value, "computed"


__all__ = ["artifact_path", "cached_artifact", "file_lock"]
