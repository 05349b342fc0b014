"""The model stage: a :class:`Predictor` loads the bundle (and the fit's forward model) once and
turns read rows into catalogue rows.

Mapped by Ray Data with ``ActorPoolStrategy`` (GPU actors when ``num_gpus`` > 0), or run inside
the read tasks on CPU clusters (:func:`read_and_estimate`, one Predictor per worker process). Input batches
are read batches (:mod:`survey_estimator.catalogue.rows`: ``x`` (B, 2, 8, 4096) float32, ``ivar``
(B, 8, 4096) float32, the read stage's catalogue columns), checked on entry; output batches are
``pyarrow.Table`` objects with exactly :data:`survey_estimator.catalogue.schema.SCHEMA`. Error
rows pass through with null estimates.

Per spectrum: the network's estimate (columns ``nn_*``), then, when a grid is reachable
(:func:`survey_estimator.fit.grid.resolve_grid`), the likelihood fit from it
(:func:`survey_estimator.fit.fit_spectra`), whose values fill the main columns (``method`` 'fit').
"""
from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pyarrow as pa

from dataclasses import dataclass

from ..labels import LABEL_NAMES
from ..storage import redact
from ..models.resolve import ModelRef, load_bundle
from .read import WorkerEnv
from .rows import arrow_columns, check_batch
from .schema import COV_SIZE, SCHEMA, STATUS_OK, CatalogueFlag, catalogue_flags


@dataclass(frozen=True)
class FitOptions:
    """Whether and with which grid the model stage fits.

    Attributes:
        enabled: False gives the network's estimate alone (``--no-fit``).
        grid: grid URI overriding the bundle's (``--grid``): store folder, s3:// store or packed .npz.
    """

    enabled: bool = True
    grid: str | None = None


@dataclass
class Estimates:
    """Per-row outputs of the model stage for a batch of n rows (NaN / None where not made)."""

    mean: np.ndarray  # (n, 4)
    sigma: np.ndarray  # (n, 4)
    cov: np.ndarray  # (n, 16)
    nn_mean: np.ndarray  # (n, 4)
    nn_sigma: np.ndarray  # (n, 4)
    flags: np.ndarray  # (n,) int64
    method: np.ndarray  # (n,) object
    chi2_red: np.ndarray
    model_error: np.ndarray
    fit_rv: np.ndarray
    fit_iterations: np.ndarray  # (n,) float (NaN = null)
    fit_converged: np.ndarray  # (n,) object (None = null)
    grid_id: np.ndarray  # (n,) object

    @classmethod
    def empty(cls, n: int, flags: np.ndarray) -> "Estimates":
        nan = lambda *shape: np.full((n, *shape), np.nan)  # noqa: E731
        none = lambda: np.full(n, None, dtype=object)  # noqa: E731
        return cls(nan(4), nan(4), nan(COV_SIZE), nan(4), nan(4), np.asarray(flags, dtype=np.int64).copy(), none(),
                   nan(), nan(), nan(), nan(), none(), none())

    @classmethod
    def network(cls, mean, sigma, cov, flags) -> "Estimates":
        """Network-only estimates (method 'network' where the mean is finite), e.g. for tests and tools."""
        mean = np.asarray(mean, dtype=np.float64)
        est = cls.empty(len(mean), flags)
        est.mean[:], est.sigma[:], est.cov[:] = mean, sigma, np.asarray(cov, dtype=np.float64).reshape(len(mean), COV_SIZE)
        est.nn_mean[:], est.nn_sigma[:] = mean, sigma
        est.method[np.isfinite(mean).all(axis=1)] = "network"
        return est


_FIT_TO_CATALOGUE = {"FIT_FAILED": CatalogueFlag.FIT_FAILED, "POOR_FIT": CatalogueFlag.POOR_FIT,
                     "AT_GRID_EDGE": CatalogueFlag.AT_GRID_EDGE, "OUTSIDE_GRID": CatalogueFlag.OUTSIDE_GRID}


def fit_flags_to_catalogue(fit_flags: np.ndarray) -> np.ndarray:
    """(n,) catalogue flag bits for (n,) :class:`survey_estimator.fit.FitFlag` values."""
    from ..fit import FitFlag

    out = np.zeros(len(fit_flags), dtype=np.int64)
    for name, bit in _FIT_TO_CATALOGUE.items():
        out |= np.where(np.asarray(fit_flags) & int(FitFlag[name]), int(bit), 0)
    return out

log = logging.getLogger(__name__)


class Predictor:
    """Callable class for ``map_batches``: loads the model (and the fit's grid) once per actor.

    Args:
        ref: the pinned model (see :func:`survey_estimator.models.resolve.resolve_model`).
        use_dae: denoise with the bundle's DAE before estimating.
        env: credentials to set in this actor's process (registry/S3 bundle downloads).
        fit: :class:`FitOptions` (default: fit whenever the bundle's grid is reachable).
    """

    def __init__(self, ref: ModelRef, use_dae: bool = True, env: WorkerEnv | None = None, fit: FitOptions | None = None):
        if env is not None:
            env.apply()
        self.ref = ref
        self.use_dae = use_dae
        self.bundle = load_bundle(ref)  # on CUDA when this actor has a GPU
        self.device = str(self.bundle.device)
        self.fitter = self._load_fitter(fit or FitOptions())
        log.info("actor loaded %s version %s on %s (%s)", ref.name, ref.version, self.device,
                 f"fit with grid {self.fitter.model.grid_id}" if self.fitter else "network only")

    def _load_fitter(self, options: FitOptions):
        if not options.enabled:
            return None
        from ..fit import Fitter
        from ..fit.grid import load_forward_model, resolve_grid

        m = self.bundle.manifest
        uri = resolve_grid(m.grid_id, options.grid, getattr(m, "grid_uri", None))
        if uri is None:
            return None
        return Fitter(load_forward_model(uri, device=self.device))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean (B,4), sigma (B,4), cov (B,4,4)) in physical units for x (B, 2, 8, 4096)."""
        pred = self.bundle.predict(x, use_dae=self.use_dae)
        mean = np.asarray(pred.mean, dtype=np.float64)
        sigma = np.asarray(pred.sigma, dtype=np.float64)
        cov = np.asarray(pred.covariance, dtype=np.float64)
        return mean, sigma, cov

    def estimate(self, batch: dict[str, np.ndarray]) -> Estimates:
        """Network, then fit, for the ok rows of a read batch."""
        n = len(batch["source_uri"])
        ok = np.asarray([s == STATUS_OK for s in batch["status"]], dtype=bool)
        est = Estimates.empty(n, batch["flags"])
        if not ok.any():
            return est
        rows = np.flatnonzero(ok)
        x = np.asarray(batch["x"], dtype=np.float32)[ok]
        m, s, c = self.predict(x)
        mask = x[:, 1] > 0.5
        est.nn_mean[ok], est.nn_sigma[ok] = m, s
        est.mean[ok], est.sigma[ok], est.cov[ok] = m, s, c.reshape(len(m), COV_SIZE)
        est.method[ok] = "network"
        est.flags[ok] |= catalogue_flags(m, s, mask, self.bundle.label_bounds, self.bundle.sigma_limits)
        if self.fitter is not None:
            self._fit(est, rows, x, np.asarray(batch["ivar"], dtype=np.float32)[ok], m, s,
                      np.asarray(batch["resolution"], dtype=np.float64)[ok])
        return est

    def _fit(self, est: Estimates, rows, x, ivar, nn_mean, nn_sigma, resolution) -> None:
        from ..fit import FitFlag, fit_spectra

        # a finite guess the fit's grid cannot reach keeps the network's estimate (a non-finite one
        # goes on to the fit, which flags it FIT_FAILED)
        beyond = ~self.fitter.covers(nn_mean, nn_sigma) & np.isfinite(nn_mean).all(axis=1)
        est.flags[rows[beyond]] |= int(CatalogueFlag.BEYOND_FIT_GRID)
        rows, x, ivar, nn_mean, nn_sigma, resolution = (a[~beyond] for a in (rows, x, ivar, nn_mean, nn_sigma, resolution))
        if not len(rows):
            return
        y = x[:, 0] + 1.0
        mask = (x[:, 1] > 0.5) & (ivar > 0)
        with np.errstate(divide="ignore"):
            var = np.where(mask, 1.0 / np.where(ivar > 0, ivar, 1.0), np.inf)
        r_model = self.fitter.model.config.resolution
        groups = np.where(np.isfinite(resolution) & (resolution < 0.99 * r_model), np.round(resolution, -2), r_model)
        for r in np.unique(groups):
            sel = np.flatnonzero(groups == r)
            res = fit_spectra(self.fitter, y[sel], var[sel], mask[sel], nn_mean[sel], nn_sigma[sel],
                              resolution=None if r >= r_model else float(r))
            idx = rows[sel]
            failed = (res.flags & int(FitFlag.FIT_FAILED)) > 0
            good = idx[~failed]
            est.mean[good] = res.labels[~failed]
            est.sigma[good] = res.sigma[~failed]
            est.cov[good] = res.cov[~failed].reshape(-1, COV_SIZE)
            est.method[good] = "fit"
            est.grid_id[good] = self.fitter.model.grid_id
            est.chi2_red[idx], est.model_error[idx], est.fit_rv[idx] = res.chi2_red, res.model_error, res.rv
            est.fit_iterations[idx] = res.iterations
            est.fit_converged[idx] = [bool(v) for v in res.converged]
            # the fit's own bounds replace the network's range flags for the fitted rows
            est.flags[good] &= ~np.int64(int(CatalogueFlag.OUTSIDE_GRID) | int(CatalogueFlag.EXTRAPOLATED))
            est.flags[idx] |= fit_flags_to_catalogue(res.flags)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Catalogue rows for a read batch. The predict step is inside the per-file guard: when
        the batch fails, each row is estimated alone and the rows that still fail become error
        rows with their retry class (e.g. MemoryError: transient).

        Raises:
            BatchError: ``batch`` breaks the row contract (:func:`~survey_estimator.catalogue.rows.check_batch`).
        """
        check_batch(batch)
        try:
            est = self.estimate(batch)
        except Exception as exc:
            log.warning("model batch of %d rows failed (%s: %s); estimating row by row", len(batch["status"]),
                        type(exc).__name__, redact(str(exc)))
            parts = [self._one(batch, i) for i in range(len(batch["status"]))]
            return pa.concat_tables(parts) if parts else build_table(batch, np.zeros(0, bool), Estimates.empty(0, []), self.ref)
        ok = np.asarray([s == STATUS_OK for s in batch["status"]], dtype=bool)
        return build_table(batch, ok, est, self.ref)

    def _one(self, batch: dict, i: int) -> pa.Table:
        row = {k: v[i : i + 1] for k, v in batch.items()}
        try:
            est = self.estimate(row)
        except Exception as exc:
            from .read import error_fields

            name = str(row["source_uri"][0]).rsplit("/", 1)[-1]
            fields = error_fields(exc, name, "predict")
            row = {**row, **{k: np.array([v], dtype=object if isinstance(v, str) else np.int64) for k, v in fields.items()}}
            est = Estimates.empty(1, row["flags"])
        ok = np.asarray([s == STATUS_OK for s in row["status"]], dtype=bool)
        return build_table(row, ok, est, self.ref)


_PREDICTOR: dict[tuple, Predictor] = {}


def process_predictor(ref: ModelRef, use_dae: bool = True, env: WorkerEnv | None = None, fit: FitOptions | None = None) -> Predictor:
    """The :class:`Predictor` of this worker process for these arguments, made on first use and
    kept (one model per process: a newer key replaces it)."""
    key = (ref, use_dae, fit or FitOptions())
    if key not in _PREDICTOR:
        _PREDICTOR.clear()
        _PREDICTOR[key] = Predictor(ref, use_dae, env, fit)
    return _PREDICTOR[key]


def read_and_estimate(batch: dict[str, np.ndarray], opts, model: dict, batch_size: int) -> pa.Table:
    """Ray Data batch function of the model stage run inside the read tasks (CPU clusters):
    :func:`~survey_estimator.catalogue.read.read_batch`, then this process's
    :func:`process_predictor` (``model``: its keyword arguments) over chunks of ``batch_size``
    rows. The pixels never leave the task: only catalogue rows (~1 kB each) go to the object store."""
    from .read import read_batch

    rows = read_batch(batch, opts)
    predictor = process_predictor(**model)
    n = len(rows["status"])
    if n == 0:
        return SCHEMA.empty_table()
    return pa.concat_tables([predictor({k: v[i:i + batch_size] for k, v in rows.items()}) for i in range(0, n, batch_size)])


def build_table(batch: dict, ok: np.ndarray, est: Estimates, ref: ModelRef) -> pa.Table:
    """Assemble a catalogue table (SCHEMA) from a read batch and its :class:`Estimates`.

    The read stage's columns come from the batch (:func:`~survey_estimator.catalogue.rows.arrow_columns`),
    the model stage's from ``est`` and ``ref``; ``flags`` is ``est.flags`` (the read stage's bits
    with the model's added). Estimates of error rows become nulls; ``processed_at`` is now (UTC).

    Raises:
        BatchError: ``batch`` breaks the row contract.
    """
    n = check_batch(batch)
    now = dt.datetime.now(dt.timezone.utc)
    per_row = {"method": est.method, "chi2_red": est.chi2_red, "model_error": est.model_error, "fit_rv_kms": est.fit_rv,
               "fit_iterations": est.fit_iterations, "fit_converged": est.fit_converged, "grid_id": est.grid_id}
    for j, name in enumerate(LABEL_NAMES):
        per_row.update({name: est.mean[:, j], f"{name}_err": est.sigma[:, j],
                        f"nn_{name}": est.nn_mean[:, j], f"nn_{name}_err": est.nn_sigma[:, j]})
    cols: dict[str, pa.Array] = arrow_columns(batch)
    for name, values in per_row.items():
        typ = SCHEMA.field(name).type
        if values.dtype == object:
            cols[name] = pa.array(list(values), typ)
        else:
            cols[name] = pa.array(values, typ, mask=~(ok & np.isfinite(values)))
    flat = pa.array(est.cov.ravel(), pa.float64())
    # a variable list: pyarrow 25 cannot read back null entries of a fixed-size list from Parquet
    offsets = pa.array(np.arange(0, n * COV_SIZE + 1, COV_SIZE, dtype=np.int32))
    cols["cov"] = pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~ok))
    cols["flags"] = pa.array(est.flags, pa.int64())
    cols["model_name"] = pa.array([ref.name] * n, pa.string())
    cols["model_version"] = pa.array([ref.version] * n, pa.string())
    cols["processed_at"] = pa.array([now] * n, SCHEMA.field("processed_at").type)
    return pa.Table.from_pydict({name: cols[name] for name in SCHEMA.names}, schema=SCHEMA)
