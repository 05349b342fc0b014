"""ESO Phase-3 1D products (``ADP.*.fits``): a binary table with one row of array columns
``WAVE`` (Angstrom), ``FLUX`` and ``ERR`` (often all-NaN: then the variance is estimated).

Frame from ``SPECSYS`` (HARPS ADP: 'BARYCENT', the star's RV not removed); air wavelengths (the
HARPS products are converted s1d).
"""
from __future__ import annotations

import numpy as np
from astropy.io import fits

from ..observation import Observation, ReadError
from .detect import Cards
from .metadata import common
from .noise import der_snr_variance
from .s1d import frame_from_specsys


def _table(hdul: fits.HDUList) -> fits.BinTableHDU:
    for hdu in hdul[1:]:
        if isinstance(hdu, fits.BinTableHDU) and {"WAVE", "FLUX"} <= {c.upper() for c in hdu.columns.names}:
            return hdu
    raise KeyError("WAVE/FLUX")


def read(name: str, hdul: fits.HDUList, cards: Cards, instrument: str, blaze=None) -> Observation:
    """Read an ADP table (already opened and checked) into an :class:`Observation`."""
    header = hdul[0].header
    table = _table(hdul)
    data = table.data
    if data is None or len(data) < 1:
        raise ReadError(name, "empty SPECTRUM table (no rows)")
    wave = np.asarray(data["WAVE"][0], dtype=np.float64).reshape(-1)
    flux = np.asarray(data["FLUX"][0], dtype=np.float64).reshape(-1)
    if wave.shape != flux.shape or wave.size < 10:
        raise ReadError(name, f"wrong shape: WAVE {wave.shape} vs FLUX {flux.shape}")
    unit = str(table.header.get("TUNIT1", "Angstrom")).strip().lower()
    if unit in ("nm", "nanometer"):
        wave = wave * 10.0
    err = None
    if "ERR" in [c.upper() for c in table.columns.names]:
        err = np.asarray(data["ERR"][0], dtype=np.float64).reshape(-1)
    if err is not None and err.shape == flux.shape and np.isfinite(err).mean() > 0.5:
        variance = err**2
    else:
        variance = der_snr_variance(flux)
    mask = np.isfinite(flux) & np.isfinite(variance) & np.isfinite(wave)
    snr = header.get("SNR")
    return Observation(
        flux=flux,
        variance=variance,
        wave=wave,
        mask=mask,
        medium="air",
        frame=frame_from_specsys(header if "SPECSYS" in header else table.header, "barycentric"),
        instrument=instrument,
        drs_version=str(cards.get("DRS VERSION") or header.get("PROCSOFT") or "phase3"),
        kind="adp",
        source=name,
        bjd=cards.float("DRS BJD"),
        berv_kms=cards.float("DRS BERV"),
        rv_kms=cards.float("DRS CCF RVC"),
        snr=None if snr is None else np.array([float(snr)]),
        **common(header, cards, instrument),
    )
