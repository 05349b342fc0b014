"""Driver-side Parquet writer of a run: few, large, new files, Hive-partitioned by night.

The model stage yields small ``pyarrow.Table`` blocks (one per model batch) holding metadata and
estimates only (no pixels: a row is ~1 kB). Writing them with Ray Data's ``write_parquet`` made one
file per block and night, and its write tasks competed with the read tasks for CPU slots. Instead
the driver buffers the rows of each night and writes ``<root>/night=YYYY-MM-DD/run-<run id>-<n>.parquet``
once a night holds ``rows_per_file`` rows, and the remainder at the end: a run writes one file per
night (more only for nights over ``rows_per_file`` rows). Files are new and uniquely named, never
rewritten; local files appear atomically (temp file + rename), S3 objects do by nature.
"""
from __future__ import annotations

import io
import logging
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..storage import Location, redact
from .schema import DATA_SCHEMA, PARTITION_COLUMN

log = logging.getLogger(__name__)


class NightWriter:
    """Buffers catalogue rows per night and writes them as Parquet files under ``root``.

    Args:
        root: the catalogue root.
        run_id: names the files (``run-<run_id>-<n>.parquet``), so one run's files can be found.
        rows_per_file: a night's buffer is written once it holds this many rows.
    """

    def __init__(self, root: Location, run_id: str, rows_per_file: int = 10000):
        if rows_per_file < 1:
            raise ValueError("rows_per_file must be at least 1")
        self.root = root
        self.run_id = run_id
        self.rows_per_file = rows_per_file
        self.files: list[str] = []
        self.rows_written = 0
        self._buffers: dict[str, list[pa.Table]] = defaultdict(list)
        self._counts: dict[str, int] = defaultdict(int)

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

    def close(self) -> list[str]:
        """Write every buffered night; returns the URIs of all files written (redacted)."""
        for night in sorted(self._buffers):
            self._write(night)
        return self.files

    def _write(self, night: str) -> None:
        parts = self._buffers.pop(night, [])
        self._counts.pop(night, None)
        if not parts:
            return
        table = pa.concat_tables(parts).select(DATA_SCHEMA.names).cast(DATA_SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        loc = self.root.join(f"{PARTITION_COLUMN}={night}", f"run-{self.run_id}-{len(self.files):06d}.parquet")
        loc.write_bytes(buf.getvalue())
        self.files.append(redact(loc.uri))
        self.rows_written += table.num_rows
        log.debug("wrote %d rows to %s", table.num_rows, redact(loc.uri))
