"""Progress of long inference (``lucidlm evaluate``, ``demo``, ``report``), shown as the training
loop shows its own: a bar on a terminal, lines in a log (``lucidlm.progress``, which the CLI
writes to stderr). Library code marks the loops that may be long with ``tracked``; nothing is
shown unless a caller asked for it with ``shown_progress`` (training's dev evaluations stay quiet).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm.auto import tqdm

progress_log = logging.getLogger("lucidlm.progress")
_SHOWING: ContextVar[str | None] = ContextVar("lucidlm_progress", default=None)
LINE_EVERY = 10.0  # seconds between progress lines in a log


def show_progress_lines(stream=None) -> None:
    """Write the progress lines (``progress_log``: training's and ``tracked`` loops') to ``stream``
    (stderr), once."""
    if not progress_log.handlers:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        progress_log.addHandler(handler)
        progress_log.setLevel(logging.INFO)
        progress_log.propagate = False


@contextmanager
def shown_progress(command: str):
    """While the block runs, ``tracked`` loops show their progress, named after ``command``."""
    token = _SHOWING.set(command)
    try:
        yield
    finally:
        _SHOWING.reset(token)


class tracked:
    """``iterable`` (of ``total`` items, ``what`` they are), its progress shown inside ``shown_progress``."""

    def __init__(self, iterable: Iterable, total: int, what: str):
        self.iterable, self.total, self.what = iterable, total, what

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator:
        command = _SHOWING.get()
        if command is None or self.total <= 1:
            yield from self.iterable
            return
        if sys.stderr.isatty():
            yield from tqdm(self.iterable, total=self.total, desc=f"{command}: {self.what}", leave=False)
            return
        started = last = time.monotonic()
        for done, item in enumerate(self.iterable, start=1):
            yield item
            now = time.monotonic()
            if now - last >= LINE_EVERY or done == self.total:
                progress_log.info(f"{command}: {self.what} {done}/{self.total} ({now - started:.0f} s)")
                last = now
