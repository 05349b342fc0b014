"""The model stage: an actor that loads the bundle once and turns read rows into catalogue rows.

Mapped by Ray Data with ``ActorPoolStrategy`` (GPU actors when ``num_gpus`` > 0). Input batches
are numpy dicts from :func:`survey_estimator.catalogue.read.read_batch` (``x``: (B, 2, 8, 4096)
float32); output batches are ``pyarrow.Table`` objects with exactly
:data:`survey_estimator.catalogue.schema.SCHEMA`. Error rows pass through with null estimates.
"""
from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pyarrow as pa

from ..labels import LABEL_NAMES
from .model import ModelRef, load_bundle
from .read import WorkerEnv
from .schema import COV_SIZE, SCHEMA, STATUS_OK, catalogue_flags

log = logging.getLogger(__name__)


class Predictor:
    """Callable class for ``map_batches``: loads the model once per actor.

    Args:
        ref: the pinned model (see :func:`survey_estimator.catalogue.model.resolve_model`).
        use_dae: denoise with the bundle's DAE before estimating.
        env: credentials to set in this actor's process (registry/S3 bundle downloads).
    """

    def __init__(self, ref: ModelRef, use_dae: bool = True, env: WorkerEnv | None = None):
        if env is not None:
            env.apply()
        self.ref = ref
        self.use_dae = use_dae
        self.bundle = load_bundle(ref)  # on CUDA when this actor has a GPU
        self.device = str(self.bundle.device)
        log.info("actor loaded %s version %s on %s", ref.name, ref.version, self.device)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean (B,4), sigma (B,4), cov (B,4,4)) in physical units for x (B, 2, 8, 4096)."""
        pred = self.bundle.predict(x, use_dae=self.use_dae)
        mean = np.asarray(pred.mean, dtype=np.float64)
        sigma = np.asarray(pred.sigma, dtype=np.float64)
        cov = np.asarray(pred.covariance, dtype=np.float64)
        return mean, sigma, cov

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["source_uri"])
        ok = np.asarray([s == STATUS_OK for s in batch["status"]], dtype=bool)
        mean = np.full((n, 4), np.nan)
        sigma = np.full((n, 4), np.nan)
        cov = np.full((n, COV_SIZE), np.nan)
        flags = np.asarray(batch["flags"], dtype=np.int64).copy()
        if ok.any():
            x = np.asarray(batch["x"], dtype=np.float32)[ok]
            m, s, c = self.predict(x)
            mean[ok], sigma[ok], cov[ok] = m, s, c.reshape(len(m), COV_SIZE)
            mask = x[:, 1] > 0.5
            flags[ok] |= catalogue_flags(m, s, mask, self.bundle.label_bounds, self.bundle.sigma_limits)
        return build_table(batch, ok, mean, sigma, cov, flags, self.ref)


def build_table(batch: dict, ok: np.ndarray, mean: np.ndarray, sigma: np.ndarray, cov: np.ndarray,
                flags: np.ndarray, ref: ModelRef) -> pa.Table:
    """Assemble a catalogue table (SCHEMA) from a read batch and per-row estimates.

    Estimates of error rows become nulls; ``processed_at`` is now (UTC).
    """
    n = len(ok)
    cols: dict[str, pa.Array] = {}
    now = dt.datetime.now(dt.timezone.utc)
    for field in SCHEMA:
        name = field.name
        if name in LABEL_NAMES:
            cols[name] = pa.array(mean[:, LABEL_NAMES.index(name)], field.type, mask=~ok)
        elif name.endswith("_err") and name[:-4] in LABEL_NAMES:
            cols[name] = pa.array(sigma[:, LABEL_NAMES.index(name[:-4])], field.type, mask=~ok)
        elif name == "cov":
            flat = pa.array(cov.ravel(), pa.float64())
            # a variable list: pyarrow 25 cannot read back null entries of a fixed-size list from Parquet
            offsets = pa.array(np.arange(0, n * COV_SIZE + 1, COV_SIZE, dtype=np.int32))
            cols[name] = pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~ok))
        elif name == "flags":
            cols[name] = pa.array(flags, field.type)
        elif name == "model_name":
            cols[name] = pa.array([ref.name] * n, field.type)
        elif name == "model_version":
            cols[name] = pa.array([ref.version] * n, field.type)
        elif name == "processed_at":
            cols[name] = pa.array([now] * n, field.type)
        else:
            values = batch[name]
            if pa.types.is_floating(field.type):
                arr = np.asarray(values, dtype=np.float64)
                cols[name] = pa.array(arr, field.type, mask=~np.isfinite(arr))
            elif pa.types.is_string(field.type):  # Ray may hand all-null columns over as NaN floats
                cols[name] = pa.array([v if isinstance(v, str) else None for v in values], field.type)
            else:
                cols[name] = pa.array(list(values), field.type)
    return pa.Table.from_pydict(cols, schema=SCHEMA)

