"""The server's model worker: one thread owns the model (it is not thread-safe: a subnetwork
intervention edits masks in place) and runs every model call, fed by a bounded queue.

- Dynamic batching: predictions that are waiting together (or arrive within ``max_wait`` of the
  first) run as one batched forward pass of at most ``max_batch`` texts, as model servers do.
- Back-pressure: when ``queue_size`` requests already wait, a new one is refused at once
  (``Overloaded``: HTTP 503 with Retry-After) instead of waiting without bound.
- Nothing a job does takes the thread down: a job whose request was cancelled (the client went
  away) before it started is skipped, a failure is that job's answer, and ``health`` says whether
  the thread is alive (``/api/health``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any


@dataclass
class ServingLimits:
    queue_size: int = 64  # requests waiting for the model; more get 503
    max_batch: int = 32  # predictions in one forward pass
    max_wait: float = 0.002  # seconds a batch waits for more predictions to join
    length_group: int = 8  # a batch's forward passes take this many texts of similar length
    explain_cache: int = 256  # explanations kept (least recently used go first)
    retry_after: int = 1  # seconds, in a 503's Retry-After


log = logging.getLogger(__name__)
STOP = object()  # queued by ``close``
TRIM_EVERY = 4  # jobs between returns of freed heap memory to the system


def _heap_trimmer():
    """glibc keeps freed heap for reuse; batches of ever different shapes fragment it, and the
    resident memory of a long-running server creeps up. ``malloc_trim`` gives it back (Linux)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class Overloaded(Exception):
    """The model's queue is full."""


@dataclass
class Job:
    run: Callable[..., Any]  # one item: run(item) -> result; a batch: run([items]) -> [results]
    item: Any
    future: Future
    batched: bool


class ModelWorker:
    def __init__(self, limits: ServingLimits):
        self.limits = limits
        self.jobs: queue.Queue = queue.Queue(maxsize=limits.queue_size)
        self.trim, self.jobs_done = _heap_trimmer(), 0
        self.thread = threading.Thread(target=self._serve, name="lucidlm-model", daemon=True)
        self.thread.start()

    def submit(self, run: Callable, item, batched: bool = False) -> Future:
        """Queue ``run(item)`` (or, ``batched``, ``run([item, ...])`` with others of the same
        ``run``); the future holds its result. Raises ``Overloaded`` when the queue is full."""
        future: Future = Future()
        try:
            self.jobs.put_nowait(Job(run, item, future, batched))
        except queue.Full:
            raise Overloaded from None
        return future

    def close(self) -> None:
        self.jobs.put(STOP)
        self.thread.join(timeout=10)

    def health(self) -> dict:
        """Whether the model thread runs, how many requests wait, and how many jobs it has run."""
        return {"alive": self.thread.is_alive(), "waiting": self.jobs.qsize(), "jobs_done": self.jobs_done}

    def _serve(self) -> None:
        waiting = None
        while True:
            job = waiting if waiting is not None else self.jobs.get()
            waiting = None
            if job is STOP:
                return
            try:
                waiting = self._run(job)
            except Exception:  # a bug in the worker itself: log it, keep serving the others
                log.exception("the model worker failed on a job")

    def _run(self, job: Job):
        """Run ``job`` (with the batched jobs that follow it); returns a job taken from the queue
        that belongs to no batch, to run next."""
        self.jobs_done += 1
        if self.trim is not None and self.jobs_done % TRIM_EVERY == 0:
            self.trim(0)
        if not job.batched:
            if _start(job):
                _settle([job], lambda: [job.run(job.item)])
            return None
        batch, following = [job], None
        deadline = time.monotonic() + self.limits.max_wait
        while len(batch) < self.limits.max_batch:
            try:
                following = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                following = None
                break
            if following is not STOP and following.batched and following.run == job.run:
                batch.append(following)
                following = None
            else:  # another kind of request (or STOP) comes after this batch
                break
        batch = [j for j in batch if _start(j)]
        if batch:
            self._run_batch(batch)
        return following

    @staticmethod
    def _run_batch(batch: list[Job]) -> None:
        try:
            results = batch[0].run([j.item for j in batch])
        except Exception:  # one bad input must not fail the others: each alone, its own answer
            for job in batch:
                _settle([job], lambda job=job: job.run([job.item]))
            return
        for job, result in zip(batch, results):
            _resolve(job.future, result=result)


def _start(job: Job) -> bool:
    """Mark the job's future running; False if its request was cancelled while it waited."""
    return job.future.set_running_or_notify_cancel()


def _resolve(future: Future, result=None, error: BaseException | None = None) -> None:
    """Give a future its answer; one that can no longer take it (cancelled, already settled) is left."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _settle(jobs: list[Job], compute: Callable[[], list]) -> None:
    try:
        results = compute()
    except Exception as e:
        for job in jobs:
            _resolve(job.future, error=e)
        return
    for job, result in zip(jobs, results):
        _resolve(job.future, result=result)
