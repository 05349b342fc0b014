"""Driver-side Parquet writer of a run: new files, Hive-partitioned by night, saved as they are made.

The model stage yields small ``pyarrow.Table`` blocks (one per model batch) holding metadata and
estimates only (no pixels: a row is ~1 kB). Writing them with Ray Data's ``write_parquet`` made one
file per block and night, and its write tasks competed with the read tasks for CPU slots. Instead
the driver buffers the rows of each night and writes ``<root>/night=YYYY-MM-DD/run-<run id>-<n>.parquet``
when a night holds ``rows_per_file`` rows, when the run holds ``flush_rows`` unsaved rows or
``flush_s`` seconds have passed since the last save (so a crash or SIGTERM loses at most that
much), and at the end. Files are new and uniquely named, never rewritten; local files appear
atomically (temp file + rename), S3 objects do by nature. A night whose write fails stays
buffered (retried at the next flush) and never stops the other nights from being written;
:meth:`NightWriter.close` raises if some night could still not be written.
"""
from __future__ import annotations

import io
import logging
import time
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..storage import Location, StorageError, redact
from .schema import DATA_SCHEMA, PARTITION_COLUMN

log = logging.getLogger(__name__)


class NightWriter:
    """Buffers catalogue rows per night and writes them as Parquet files under ``root``.

    Args:
        root: the catalogue root.
        run_id: names the files (``run-<run_id>-<n>.parquet``), so one run's files can be found.
        rows_per_file: a night's buffer is written once it holds this many rows.
        flush_rows: every night is written once the run holds this many unsaved rows (None: rows_per_file).
        flush_s: every night is written once this many seconds passed since the last save (None: never by time).
    """

    def __init__(self, root: Location, run_id: str, rows_per_file: int = 10000, flush_rows: int | None = None,
                 flush_s: float | None = None):
        if rows_per_file < 1 or (flush_rows is not None and flush_rows < 1):
            raise ValueError("rows_per_file and flush_rows must be at least 1")
        self.root = root
        self.run_id = run_id
        self.rows_per_file = rows_per_file
        self.flush_rows = flush_rows or rows_per_file
        self.flush_s = flush_s
        self.files: list[str] = []
        self.rows_written = 0
        self.failed: dict[str, str] = {}
        """Nights whose last write failed -> the reason (their rows are still buffered)."""
        self._buffers: dict[str, list[pa.Table]] = defaultdict(list)
        self._counts: dict[str, int] = defaultdict(int)
        self._last_save = time.monotonic()

    @property
    def pending(self) -> int:
        """Rows taken but not yet saved."""
        return sum(self._counts.values())

    def add(self, table: pa.Table) -> None:
        """Take a block of catalogue rows (:data:`~survey_estimator.catalogue.schema.SCHEMA`)."""
        if table.num_rows == 0:
            return
        nights = table[PARTITION_COLUMN]
        for night in pc.unique(nights).to_pylist():
            part = table.filter(pc.equal(nights, night))
            self._buffers[night].append(part)
            self._counts[night] += part.num_rows
            if self._counts[night] >= self.rows_per_file:
                self._write(night)
        if self.pending >= self.flush_rows or (self.flush_s is not None and time.monotonic() - self._last_save >= self.flush_s):
            self.flush()

    def flush(self) -> None:
        """Write every buffered night (each on its own: one failing does not stop the others)."""
        for night in sorted(self._buffers):
            self._write(night)
        self._last_save = time.monotonic()

    def close(self) -> list[str]:
        """Write every buffered night; returns the URIs of all files written (redacted).

        Raises:
            StorageError: some nights could not be written (the others were); their files are
                not in the catalogue, so the next run does them again.
        """
        self.flush()
        if self.failed:
            lost = sum(self._counts.values())
            raise StorageError(f"could not write {lost} rows of night(s) {', '.join(sorted(self.failed))} "
                               f"({next(iter(self.failed.values()))}); the other nights were written")
        return self.files

    def _write(self, night: str) -> None:
        parts = self._buffers.get(night)
        if not parts:
            return
        table = pa.concat_tables(parts).select(DATA_SCHEMA.names).cast(DATA_SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        loc = self.root.join(f"{PARTITION_COLUMN}={night}", f"run-{self.run_id}-{len(self.files):06d}.parquet")
        try:
            loc.write_bytes(buf.getvalue())
        except StorageError as exc:
            self.failed[night] = redact(str(exc))
            log.error("could not write %d rows of night %s: %s (kept; retried at the next save)", table.num_rows, night,
                      self.failed[night])
            return
        self.failed.pop(night, None)
        del self._buffers[night]
        self._counts.pop(night, None)
        self.files.append(redact(loc.uri))
        self.rows_written += table.num_rows
        log.debug("wrote %d rows to %s", table.num_rows, redact(loc.uri))
