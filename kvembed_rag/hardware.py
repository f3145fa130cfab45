"""What this machine's processor can do fast, and the dtype ``dtype="auto"`` picks from that.

bfloat16 pays on a CPU only where the processor multiplies it natively (AVX512-BF16 or AMX-BF16):
elsewhere oneDNN emulates it through float32 and it is slower than float32 itself. So ``"auto"`` asks
the processor, never guesses from its name: torch's own checks first (``torch.cpu._is_avx512_bf16_supported``
and friends, which read CPUID), then the kernel's flags in ``/proc/cpuinfo`` on older torch builds.
VNNI (AVX512-VNNI / AVX-VNNI) is reported too, for users choosing a quantised backbone.

The flag is necessary, not sufficient: a virtual machine on a processor with AMX may hide AMX and leave
only AVX512-BF16, whose oneDNN kernels can be slower than MKL's float32 (measured on this project's Xeon
VMs: bf16 ~0.5x float32 on a 2048x640x2048 matmul). So where the flag is present, ``"auto"`` also times
the two dtypes once on this machine (interleaved, about half a second) and picks bfloat16 only if it is at
least :data:`BF16_MIN_SPEEDUP` times faster. The verdict is cached on disk per processor, feature set,
thread count and torch version (``$KVEMBED_CACHE/hardware/``), so the choice is stable across runs.

``KVEMBED_AUTO_DTYPE`` (``float32``/``bfloat16``) overrides what ``"auto"`` picks on a CPU; the test suite
sets it to ``float32`` so that fast tests keep float32 tolerances on every machine.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

#: the environment variable that pins what ``dtype="auto"`` resolves to on CPUs
AUTO_DTYPE_ENV = "KVEMBED_AUTO_DTYPE"

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

#: bfloat16 must beat float32 by this factor on the matmul check for "auto" to pick it on a CPU
BF16_MIN_SPEEDUP = 1.15

#: the square-ish matmul used for the peak and the check (the issue's shape: 2048x640 by 640x2048)
PEAK_SHAPE = (2048, 640, 2048)

# /proc/cpuinfo flag names (Linux) for each capability
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuFeatures:
    """What the processor offers for low-precision matrix products, and how that was found out."""

    avx512_bf16: bool
    amx_bf16: bool
    avx512_vnni: bool
    avx_vnni: bool
    amx_int8: bool
    source: str  # "torch" (CPUID through torch), "cpuinfo" (/proc/cpuinfo) or "none" (nothing to ask)
    cpu_name: str = ""

    @property
    def native_bf16(self) -> bool:
        """bfloat16 matrix products run in hardware (AVX512-BF16 or AMX-BF16)."""
        return self.avx512_bf16 or self.amx_bf16

    @property
    def vnni(self) -> bool:
        """int8 dot products run in hardware (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
        return self.avx512_vnni or self.avx_vnni or self.amx_int8

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "native_bf16": self.native_bf16, "vnni": self.vnni}


def _from_torch() -> CpuFeatures | None:
    """torch's CPUID-based checks (torch >= 2.3 has ``torch.cpu.get_capabilities``)."""
    cpu = getattr(torch, "cpu", None)
    get = getattr(cpu, "get_capabilities", None)
    if get is not None:
        try:
            caps = dict(get())
        except (RuntimeError, TypeError):  # pragma: no cover - a build without cpuinfo support
            caps = {}
        if caps:
            return CpuFeatures(
                avx512_bf16=bool(caps.get("avx512_bf16", False)),
                amx_bf16=bool(caps.get("amx_bf16", False)),
                avx512_vnni=bool(caps.get("avx512_vnni", False)),
                avx_vnni=bool(caps.get("avx_vnni", False)),
                amx_int8=bool(caps.get("amx_int8", False)),
                source="torch",
                cpu_name=str(caps.get("cpu_name", "")),
            )
    checks = {name: getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")}
    if checks["_is_avx512_bf16_supported"] is None:
        return None
    amx = bool(checks["_is_amx_tile_supported"]()) if checks["_is_amx_tile_supported"] else False
    vnni = getattr(cpu, "_is_vnni_supported", None)
    return CpuFeatures(
        avx512_bf16=bool(checks["_is_avx512_bf16_supported"]()),
        amx_bf16=amx,  # AMX tiles come with AMX-BF16 on every processor that has them
        avx512_vnni=bool(vnni()) if vnni else False,
        avx_vnni=False,
        amx_int8=amx,
        source="torch",
    )


def parse_cpuinfo(text: str) -> CpuFeatures:
    """Features from the text of ``/proc/cpuinfo`` (the ``flags`` line of the first processor)."""
    flags: set[str] = set()
    name = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "model name" and not name:
            name = value.strip()
    return CpuFeatures(
        avx512_bf16="avx512_bf16" in flags,
        amx_bf16="amx_bf16" in flags,
        avx512_vnni="avx512_vnni" in flags,
        avx_vnni="avx_vnni" in flags,
        amx_int8="amx_int8" in flags,
        source="cpuinfo",
        cpu_name=name,
    )


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """The processor's features, detected once per process."""
    found = _from_torch()
    if found is not None:
        return found
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        try:
            return parse_cpuinfo(cpuinfo.read_text(errors="replace"))
        except OSError:
            pass
    return CpuFeatures(False, False, False, False, False, source="none", cpu_name=platform.processor())


def _named(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    key = dtype.lower()
    if key not in DTYPE_NAMES:
        raise ValueError(f"dtype must be 'auto', one of {sorted(DTYPE_NAMES)} or a torch.dtype; got {dtype!r}")
    return DTYPE_NAMES[key]


def matmul_flops(
    dtype: str | torch.dtype,
    device: torch.device | str = "cpu",
    *,
    shape: tuple[int, int, int] = PEAK_SHAPE,
    seconds: float = 0.3,
) -> float:
    """Achieved FLOP/s of one ``(M, K) @ (K, N)`` product in ``dtype`` on ``device`` (median of repeats).

    ``seconds`` bounds the time spent after two warm-ups.
    """
    device = torch.device(device)
    m, k, n = shape
    run = _matmul_runner(dtype, device, m, k, n)
    for _ in range(2):
        run()
    times: list[float] = []
    spent = 0.0
    while spent < seconds or len(times) < 3:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return 2.0 * m * k * n / statistics.median(times)


def _matmul_runner(dtype: str | torch.dtype, device: torch.device, m: int, k: int, n: int) -> Any:
    generator = torch.Generator().manual_seed(0)
    torch_dtype = _named(dtype)
    a = torch.randn(m, k, generator=generator).to(device=device, dtype=torch_dtype)
    b = torch.randn(k, n, generator=generator).to(device=device, dtype=torch_dtype)

    def run() -> None:
        with torch.inference_mode():
            torch.mm(a, b)

    return run


def bf16_speedup(rounds: int = 5) -> float:
    """bfloat16 over float32 matmul throughput on this CPU, timed interleaved (median of ``rounds`` pairs)."""
    ratios = [
        matmul_flops(torch.bfloat16, seconds=0.04) / matmul_flops(torch.float32, seconds=0.04) for _ in range(rounds)
    ]
    return statistics.median(ratios)


def _verdict_key(features: CpuFeatures) -> dict[str, Any]:
    return {"cpu": features.to_dict(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def measured_bf16_speedup(features: CpuFeatures) -> float:
    """:func:`bf16_speedup`, measured once per machine configuration and cached on disk (stable choices)."""
    from ._io import write_json_atomically
    from .artifacts import cached_artifact

    speedup, _ = cached_artifact(
        "hardware",
        _verdict_key(features),
        suffix=".json",
        read=lambda path: float(json.loads(path.read_text())["bf16_speedup"]),
        write=lambda path, value: write_json_atomically(
            path, {"bf16_speedup": value, "cpu": features.to_dict(), "measured": time.time()}
        ),
        compute=bf16_speedup,
    )
    return speedup


def auto_dtype(device: torch.device, features: CpuFeatures | None = None) -> tuple[torch.dtype, str]:
    """What ``dtype="auto"`` means on ``device``, and why (one short sentence)."""
    if device.type == "cuda":
        return torch.bfloat16, "CUDA: bfloat16"
    if device.type != "cpu":
        return torch.float32, f"{device.type}: float32 (bfloat16 is not known to pay there)"
    pinned = os.environ.get(AUTO_DTYPE_ENV, "").strip()
    if pinned:
        return _named(pinned), f"CPU: {AUTO_DTYPE_ENV}={pinned}"
    features = features or cpu_features()
    if not features.native_bf16:
        return torch.float32, f"CPU without native bfloat16 (by {features.source}): float32"
    which = "+".join(f for f, on in (("avx512_bf16", features.avx512_bf16), ("amx_bf16", features.amx_bf16)) if on)
    speedup = measured_bf16_speedup(features)
    if speedup >= BF16_MIN_SPEEDUP:
        return torch.bfloat16, f"CPU with native bfloat16 ({which}), bf16 matmul {speedup:.2f}x float32: bfloat16"
    return torch.float32, (
        f"CPU with native bfloat16 ({which}) but bf16 matmul only {speedup:.2f}x float32 here "
        f"(< {BF16_MIN_SPEEDUP}): float32"
    )


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """``None``/``"auto"`` -> :func:`auto_dtype`; a name (``"bf16"``, ``"float32"`` ...) or a torch dtype as given."""
    device = torch.device(device)
    if dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto"):
        return auto_dtype(device)[0]
    return _named(dtype)


def describe_hardware(device: torch.device | str = "cpu") -> dict[str, Any]:
    """JSON-ready summary for ``kvembed-rag info`` and benchmark records: features, threads, auto's choice."""
    device = torch.device(device)
    dtype, reason = auto_dtype(device)
    info: dict[str, Any] = {
        "device": device.type,
        "auto_dtype": str(dtype).removeprefix("torch."),
        "auto_reason": reason,
        "threads": torch.get_num_threads(),
        "cpu": cpu_features().to_dict(),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def hardware_line(info: dict[str, Any]) -> str:
    """One line for humans: ``bf16 yes (avx512_bf16) vnni yes amx no, 2 threads; auto -> bfloat16 because ...``."""
    cpu = info["cpu"]

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    return (
        f"bf16 {yes(cpu['native_bf16'])} (avx512_bf16 {yes(cpu['avx512_bf16'])}, amx_bf16 {yes(cpu['amx_bf16'])}), "
        f"vnni {yes(cpu['vnni'])}, amx_int8 {yes(cpu['amx_int8'])} [detected by {cpu['source']}], "
        f"{info['threads']} threads; auto dtype -> {info['auto_dtype']} ({info['auto_reason']})"
    )
