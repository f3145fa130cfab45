"""What the commands print besides results: a progress line per batch (rate and ETA) and search hits."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Collection
from typing import IO, Any


class _LogLines:
    """A stream for tqdm when stderr is not a terminal: each redraw (``"\\r" + bar``) becomes its own line, so a
    log file holds one readable line per update instead of one line of carriage returns."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip("\n")
        if line.strip():
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """One tqdm bar on stderr: redrawn in place on a terminal, a line every ``log_interval`` seconds in a log.

    ``update(done, note)`` takes the work done so far in ``unit`` (tokens for embedding); tqdm shows the share
    done, the rate, the ETA and ``note``. Disabled, it prints nothing. (The Python API's own bar,
    ``show_progress=True``, is tqdm too: one progress mechanism.)
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "tok",
        enabled: bool = True,
        stream: IO[str] | None = None,
        log_interval: float = 10.0,
    ) -> None:
        from tqdm import tqdm

        stream = stream or sys.stderr
        tty = bool(getattr(stream, "isatty", lambda: False)())
        self.bar = tqdm(
            total=max(int(total), 0),
            desc=label,
            unit=f" {unit}",
            disable=not enabled,  # explicit, so the CLI's TQDM_DISABLE (for the libraries' bars) leaves ours on
            file=stream if tty else _LogLines(stream),
            mininterval=0.2 if tty else log_interval,
            dynamic_ncols=tty,
            ncols=None if tty else 100,
            ascii=not tty,
            leave=True,
        )

    @property
    def done(self) -> int:
        return int(self.bar.n)

    def update(self, done: int, note: str = "", *, force: bool = False) -> None:
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.update(int(done) - self.bar.n)
        if force:
            self.bar.refresh()

    def close(self) -> None:
        """Draw the final state and end the line."""
        self.bar.close()


def status(message: str, *, enabled: bool = True) -> None:
    """A stage message on stderr (what is happening before the first progress line)."""
    if enabled:
        print(message, file=sys.stderr, flush=True)


def shorten(text: str, width: int) -> str:
    """``text`` on one line, cut at a word boundary with an ellipsis when longer than ``width``."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    cut = textwrap.shorten(flat, width=width, placeholder=" …")
    if cut == " …".strip() or len(cut) < width // 2:  # one very long word: cut it, still marked
        return flat[: width - 1] + "…"
    return cut


def print_hits(query: str, hits: list[Any], seconds: float, *, expected: Collection[str] = ()) -> None:
    """One query's ranked documents with scores, ids, titles and snippets (``expected`` ones marked)."""
    print(f"\nQ: {query}   ({seconds * 1000:.0f} ms)")
    for rank, hit in enumerate(hits, start=1):
        mark = "  <- expected" if hit.document in expected else ""
        print(f"  {rank}. {hit.score:.3f}  {hit.document}  [{shorten(hit.title, 70)}]{mark}")
        print(f"     {shorten(hit.snippet, 160)}")


class BuildProgress:
    """``build_index``'s ``progress(documents_done, tokens_done, tokens_total)`` as a :class:`Progress` line.

    Nothing is drawn until the build calls it (so a refused index prints no bar); the first call, made
    before the first batch, says how much there is to embed.
    """

    def __init__(self, label: str, documents: int, *, enabled: bool = True) -> None:
        self.label, self.documents, self.enabled = label, documents, enabled
        self.bar: Progress | None = None

    def __call__(self, documents_done: int, tokens_done: int, tokens_total: int) -> None:
        if self.bar is None:
            todo = self.documents - documents_done
            if todo and self.enabled:
                status(
                    f"{self.label}: {todo:,} of {self.documents:,} documents to embed ({tokens_total:,} tokens), "
                    f"{documents_done:,} unchanged",
                )
            self.bar = Progress(self.label, tokens_total, enabled=self.enabled and todo > 0)
        self.bar.update(tokens_done, f"{documents_done:,}/{self.documents:,} docs stored")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class EncodeProgress:
    """The eval cache's ``progress(label, texts_done, texts_total, tokens_done, tokens_total)``: one
    :class:`Progress` line per computed encode (cached encodes print nothing)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Progress | None = None

    def __call__(self, label: str, texts_done: int, texts_total: int, tokens_done: int, tokens_total: int) -> None:
        if texts_done == 0 or self.bar is None:
            self.close()
            self.bar = Progress(f"  embedding {label}", tokens_total, enabled=self.enabled)
        self.bar.update(tokens_done, f"{texts_done:,}/{texts_total:,} texts")
        if texts_done >= texts_total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
