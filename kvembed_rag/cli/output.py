"""What the commands print besides results: a progress line per batch (rate and ETA) and search hits."""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Collection
from typing import IO, Any


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


class Progress:
    """One status line on stderr, redrawn per update on a terminal, printed every few seconds in a log.

    ``update(done, note)`` takes the work done so far in ``unit`` (tokens for embedding); the line shows the
    share done, the rate since the first update and the ETA. Disabled, it prints nothing.
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
        self.label, self.total, self.unit, self.enabled = label, max(int(total), 0), unit, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.2 if self.tty else log_interval
        self.start = time.perf_counter()
        self.last_print = -1e9
        self.done = 0
        self.note = ""
        self._dirty = False

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f"{100 * self.done / self.total:3.0f}% " if self.total else ""
        parts = [f"{self.label}: {share}{self.done:,}/{self.total:,} {self.unit}"]
        if self.done and rate > 0:
            parts.append(f"{rate:,.0f} {self.unit}/s")
            if self.total > self.done:
                parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts)

    def update(self, done: int, note: str = "", *, force: bool = False) -> None:
        self.done, self.note = int(done), note
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last_print < self.interval:
            self._dirty = True
            return
        self.last_print, self._dirty = now, False
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if not self.enabled:
            return
        if self._dirty or self.tty:
            self.update(self.done, self.note, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        self.enabled = False


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
