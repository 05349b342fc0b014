"""The status of one (file, ETag, model version): ok, or an error with a retry class.

Every per-file step of a run (stat, fetch, blaze fetch, read, preprocess, predict) runs inside a
guard that turns an exception into an error row with a class (:func:`classify`):

* ``permanent``: the file itself is bad (not FITS, truncated, no wavelength solution, too large,
  an unsafe S3 key, not a regular file ...): never retried for this ETag and model version;
* ``transient``: storage, timeouts, the per-file deadline, memory, a task lost with its worker:
  retried by the next run;
* ``unexpected``: anything else, i.e. a bug or an input nobody foresaw: retried once the code
  (:func:`code_version`) or the preprocessing version differs from the one that wrote the row.

:func:`is_done` decides from a row whether a later run skips its (file, ETag, model version).
Rows written before the retry classes existed (``error_class`` null) count as permanent unless
their reason starts with ``transient:``.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from ..storage import StorageError

OK = "ok"
PERMANENT = "permanent"
TRANSIENT = "transient"
UNEXPECTED = "unexpected"
ERROR_CLASSES = (PERMANENT, TRANSIENT, UNEXPECTED)
LEGACY_TRANSIENT_PREFIX = "transient:"
"""Reasons of transient errors written before the ``error_class`` column existed."""


class FileRejected(ValueError):
    """A file refused before reading (too large, not a regular file, unsafe key): permanent."""


class DeadlineExceeded(TimeoutError):
    """The per-file deadline passed: transient (the next run tries again)."""


class TransientError(RuntimeError):
    """A failure outside the file (e.g. its read task was lost with its worker): transient."""


def classify(exc: BaseException) -> str:
    """The retry class of an exception raised by a per-file step.

    Storage errors, timeouts (the per-file deadline included), MemoryError and
    :class:`TransientError` are transient; ``ValueError`` (the readers' ``ReadError``, the
    preprocessing's refusals, :class:`FileRejected`) is permanent; anything else is unexpected.
    """
    if isinstance(exc, (StorageError, TimeoutError, MemoryError, TransientError, ConnectionError)):
        return TRANSIENT
    if isinstance(exc, ValueError):
        return PERMANENT
    return UNEXPECTED


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+<sha256 of the package's Python sources, 12 hex>``: changes whenever
    any code that can read, preprocess or estimate changes (unexpected errors are then retried)."""
    from .. import __version__

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def error_class_of(status: str | None, error_class: str | None, error: str | None) -> str:
    """The class of a catalogue row: ``ok``, or its error class (legacy rows: see module doc)."""
    if status == OK:
        return OK
    if error_class in ERROR_CLASSES:
        return error_class
    return TRANSIENT if (error or "").startswith(LEGACY_TRANSIENT_PREFIX) else PERMANENT


def is_done(status: str | None, error_class: str | None, error: str | None, row_code: str | None,
            row_preprocessing: str | None, code: str, preprocessing: str) -> bool:
    """Whether a row settles its (file, ETag, model version): ok and permanent rows always,
    unexpected rows while code and preprocessing versions are those that wrote them, transient never."""
    cls = error_class_of(status, error_class, error)
    if cls == UNEXPECTED:
        return row_code == code and row_preprocessing == preprocessing
    return cls in (OK, PERMANENT)
