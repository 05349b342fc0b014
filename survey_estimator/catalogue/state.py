"""What a catalogue records besides its rows, for the ``latest`` view: the archive as last listed
and the order in which model versions were promoted.

* ``<catalogue>/_archive.parquet``: (source_uri, etag, size_bytes, listed_at) of every science
  file of the archive at the last run's listing, replaced by each run. A row whose file is not
  there is of a file gone from the archive; a row with another ETag is of superseded content.
* ``<catalogue>/_models.json``: the promotion history, a list of {model_name, model_version,
  promoted_at, run_id}. A run appends its model when it is not the last entry, so a rollback
  (a run with an older version again) is a new, later promotion of that version.

Both are written by a run holding the catalogue's lock (:mod:`~survey_estimator.catalogue.lock`);
names starting with ``_`` keep them out of every dataset reader.
"""
from __future__ import annotations

import datetime as dt
import io
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from ..storage import StorageError, redact, resolve

log = logging.getLogger(__name__)

ARCHIVE_NAME = "_archive.parquet"
MODELS_NAME = "_models.json"
ARCHIVE_SCHEMA = pa.schema([("source_uri", pa.string()), ("etag", pa.string()), ("size_bytes", pa.int64()),
                            ("listed_at", pa.timestamp("us", tz="UTC"))])
MODELS_SCHEMA = pa.schema([("model_name", pa.string()), ("model_version", pa.string()),
                           ("promoted_at", pa.timestamp("us", tz="UTC")), ("run_id", pa.string())])


def record_listing(out_uri: str, files) -> None:
    """Replace the archive snapshot with ``files`` (listing entries with uri, etag, size)."""
    now = dt.datetime.now(dt.timezone.utc)
    table = pa.table({"source_uri": [f.uri for f in files], "etag": [f.etag for f in files],
                      "size_bytes": [int(f.size) for f in files], "listed_at": [now] * len(files)}, schema=ARCHIVE_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    resolve(out_uri).join(ARCHIVE_NAME).write_bytes(buf.getvalue())


def load_listing(out_uri: str) -> pa.Table | None:
    """The last archive snapshot, or None when no run recorded one (or it cannot be read)."""
    loc = resolve(out_uri).join(ARCHIVE_NAME)
    try:
        if not loc.exists():
            return None
        return pq.read_table(io.BytesIO(loc.read_bytes())).cast(ARCHIVE_SCHEMA)
    except (StorageError, OSError, pa.ArrowException) as exc:
        log.warning("archive snapshot %s unreadable (%s): files gone from the archive are not flagged", redact(loc.uri), exc)
        return None


def load_models(out_uri: str) -> list[dict]:
    """The promotion history (oldest first); [] when none was recorded."""
    loc = resolve(out_uri).join(MODELS_NAME)
    try:
        if not loc.exists():
            return []
        history = loc.read_json()
    except (StorageError, ValueError) as exc:
        log.warning("model promotion history %s unreadable (%s)", redact(loc.uri), exc)
        return []
    return history if isinstance(history, list) else []


def record_model(out_uri: str, model_name: str, model_version: str, run_id: str,
                 when: dt.datetime | None = None) -> bool:
    """Append (model_name, model_version) to the promotion history unless it is the last entry;
    True when it was appended (a promotion or a rollback)."""
    history = load_models(out_uri)
    if history and (history[-1].get("model_name"), history[-1].get("model_version")) == (model_name, model_version):
        return False
    when = when or dt.datetime.now(dt.timezone.utc)
    history.append({"model_name": model_name, "model_version": model_version, "promoted_at": when.isoformat(), "run_id": run_id})
    resolve(out_uri).join(MODELS_NAME).write_json(history)
    log.info("catalogue %s: model %s version %s promoted (%d in the history)", redact(out_uri), model_name, model_version,
             len(history))
    return True


def models_table(out_uri: str) -> pa.Table:
    """The promotion history as a table (:data:`MODELS_SCHEMA`)."""
    history = load_models(out_uri)
    rows = []
    for h in history:
        try:
            rows.append({"model_name": h["model_name"], "model_version": str(h["model_version"]),
                         "promoted_at": dt.datetime.fromisoformat(h["promoted_at"]), "run_id": h.get("run_id")})
        except (KeyError, TypeError, ValueError):
            continue
    return pa.Table.from_pylist(rows, schema=MODELS_SCHEMA)
