"""The one retry layer of a catalogue run, and the per-file deadline.

Storage calls of the read stage are retried here and nowhere else: the S3 filesystem they use
makes a single attempt per request (:func:`survey_estimator.storage.s3_filesystem` with
``retries=1``), so an outage costs at most ``attempts`` requests per file, spaced by exponential
backoff with full jitter and bounded in total by ``budget_s`` and by the file's
:class:`Deadline`. A read task that has seen an object fail after all its retries tries the
following objects once only until one succeeds (:class:`RetryPolicy.after_failure`), so a dead
endpoint costs seconds per task, not minutes.
"""
from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, TypeVar

from ..storage import StorageError, redact
from .status import DeadlineExceeded

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How a storage call is retried.

    Attributes:
        attempts: calls in all (1: no retry).
        base_s: backoff before retry k is uniform in [0, min(max_delay_s, base_s * 2**k)] (full jitter).
        max_delay_s: cap of one backoff.
        budget_s: no retry starts once this much time has passed since the first call.
    """

    attempts: int = 4
    base_s: float = 0.5
    max_delay_s: float = 4.0
    budget_s: float = 20.0

    def after_failure(self) -> "RetryPolicy":
        """The policy for the next objects of a task after one failed all its attempts."""
        return replace(self, attempts=1)

    def delay(self, retry: int) -> float:
        return random.uniform(0.0, min(self.max_delay_s, self.base_s * 2**retry))


class Deadline:
    """A per-file time limit: ``check`` raises :class:`DeadlineExceeded` once it has passed and
    ``alarm`` interrupts Python code that blocks past it (SIGALRM, main thread only)."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()

    def check(self, step: str) -> None:
        if self.remaining() <= 0:
            raise DeadlineExceeded(f"per-file deadline of {self.seconds:g} s passed ({step})")

    @contextlib.contextmanager
    def alarm(self):
        """Raise :class:`DeadlineExceeded` in this thread when the deadline passes inside the block."""
        if self.end is None or threading.current_thread() is not threading.main_thread():
            yield
            return

        def _raise(signum, frame):
            raise DeadlineExceeded(f"per-file deadline of {self.seconds:g} s passed")

        previous = signal.signal(signal.SIGALRM, _raise)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, self.remaining()))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def call(fn: Callable[[], T], what: str, policy: RetryPolicy, deadline: Deadline | None = None) -> T:
    """``fn()``, retrying :class:`StorageError` as ``policy`` says and within ``deadline``.

    Raises:
        StorageError: the last failure (redacted), after the attempts, the budget or the deadline ran out.
        DeadlineExceeded: the deadline passed before a call could start.
    """
    deadline = deadline or Deadline(None)
    t0 = time.monotonic()
    for attempt in range(max(1, policy.attempts)):
        deadline.check(what)
        try:
            return fn()
        except StorageError as exc:
            delay = policy.delay(attempt)
            last = attempt == policy.attempts - 1
            if last or time.monotonic() - t0 + delay > policy.budget_s or delay >= deadline.remaining():
                raise StorageError(f"{redact(str(exc))} (after {attempt + 1} attempt(s), {time.monotonic() - t0:.1f} s)") from None
            log.warning("%s failed (%s); retry %d/%d in %.1f s", redact(what), redact(str(exc)), attempt + 1,
                        policy.attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
