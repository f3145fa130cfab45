"""A real long-document corpus that exists on every machine: Python's own module documentation.

``pydoc`` renders each standard-library module's documentation as plain text: tens of thousands of
tokens for ``os`` or ``typing``, a few hundred for small modules. Good for demos and examples that must
run offline with no data files.
"""

from __future__ import annotations

import importlib
import io
import pydoc
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from .._io import read_text_file

#: a varied default selection: files, text, numbers, time, networking, concurrency, data formats
DEFAULT_MODULES = (
    "json",
    "csv",
    "sqlite3",
    "pathlib",
    "shutil",
    "datetime",
    "zoneinfo",
    "random",
    "statistics",
    "decimal",
    "fractions",
    "heapq",
    "bisect",
    "itertools",
    "functools",
    "re",
    "textwrap",
    "difflib",
    "hashlib",
    "secrets",
    "base64",
    "zipfile",
    "tarfile",
    "gzip",
    "logging",
    "argparse",
    "threading",
    "queue",
    "subprocess",
    "socket",
    "urllib.parse",
    "http.client",
    "email.message",
    "xml.etree.ElementTree",
    "unittest",
    "doctest",
    "timeit",
    "tempfile",
    "uuid",
    "dataclasses",
)


@dataclass
class SourceDocument:
    id: str
    title: str
    text: str
    source: str


#: what makes a pydoc page differ between processes: object addresses (``<function copy2 at 0x7f3a...>``)
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")


def normalise_pydoc(text: str) -> str:
    """``text`` with memory addresses replaced by ``0x...``, so a page hashes the same in every process."""
    return _ADDRESS.sub("0x...", text)


def stdlib_documents(modules: tuple[str, ...] | list[str] = DEFAULT_MODULES) -> list[SourceDocument]:
    """Render each importable module's pydoc page as plain text (modules that fail to import are skipped).

    Pages are normalised (:func:`normalise_pydoc`): their content hash is stable across processes, so an
    index built from them is reused by the next run instead of re-embedding the pages that print addresses.
    """
    documents = []
    for name in modules:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
                text = normalise_pydoc(pydoc.render_doc(module, renderer=pydoc.plaintext))  # type: ignore[attr-defined]
        except Exception:
            continue
        first_line = (module.__doc__ or name).strip().splitlines()[0] if module.__doc__ else name
        documents.append(SourceDocument(f"stdlib:{name}", f"{name}: {first_line}", text, f"pydoc {name}"))
    return documents


def read_folder(path: str | Path, suffixes: tuple[str, ...] = (".txt", ".md", ".rst")) -> list[SourceDocument]:
    """Every text file under ``path`` (recursively), one document each, id = relative path."""
    root = Path(path)
    if root.is_file():
        files = [root]
        root = root.parent
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    else:
        raise FileNotFoundError(f"{root}: no such file or directory")
    documents = []
    for file in files:
        text = read_text_file(file)
        stream = io.StringIO(text)
        title = next((line.strip().lstrip("# ") for line in stream if line.strip()), file.stem)
        documents.append(SourceDocument(str(file.relative_to(root)), title[:200], text, str(file)))
    return documents


#: the examples' default corpus: six pages, about 33k Gemma tokens (a minute or two on 2 CPU cores)
EXAMPLE_MODULES = ("json", "csv", "statistics", "subprocess", "shutil", "uuid")

#: a smaller default for the demo: 19 pages, about 82k Gemma tokens, 0.9k to 7.7k tokens each
DEMO_MODULES = (
    "json",
    "csv",
    "shutil",
    "random",
    "statistics",
    "heapq",
    "bisect",
    "functools",
    "textwrap",
    "hashlib",
    "secrets",
    "base64",
    "gzip",
    "subprocess",
    "tempfile",
    "uuid",
    "timeit",
    "zipfile",
    "argparse",
)


def read_jsonl(
    path: str | Path, *, text_field: str = "text", id_field: str = "id", title_field: str = "title"
) -> list[SourceDocument]:
    """One document per JSON line; missing ids become ``<file>:<line>``. Errors name the file and line."""
    import json

    file = Path(path)
    documents = []
    for number, line in enumerate(read_text_file(file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise ValueError(f"{file}:{number}: expected an object with a string {text_field!r} field")
        doc_id = str(row.get(id_field) or f"{file.name}:{number}")
        documents.append(SourceDocument(doc_id, str(row.get(title_field) or ""), row[text_field], f"{file}:{number}"))
    return documents


def read_sources(paths: list[str] | list[Path], **jsonl_fields: str) -> list[SourceDocument]:
    """Folders (``.txt .md .rst``, recursively), single text files and ``.jsonl`` files, in the order given."""
    documents: list[SourceDocument] = []
    for item in paths:
        path = Path(item)
        if path.suffix == ".jsonl" and path.is_file():
            documents += read_jsonl(path, **jsonl_fields)
        else:
            documents += read_folder(path)
    return documents


def read_texts(path: str | Path | None) -> list[str]:
    """Non-empty lines of a file or stdin (``None`` or ``-``); a ``.jsonl`` file gives each object's ``text``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (file, line or byte) for bad input.
    """
    if path is None or str(path) == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"<stdin>: not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}") from None
        return [line for line in text.splitlines() if line.strip()]
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    if file.suffix == ".jsonl":
        return [document.text for document in read_jsonl(file)]
    return [line for line in read_text_file(file).splitlines() if line.strip()]
