"""Simulated HARPS-N old-DRS products: ``*_e2ds_A.fits`` and its ``*_blaze_A.fits``.

What a file holds (faithful to FACTS section 1, old DRS ``HARPN_3.7``):

* primary HDU, float32 (69, 4096): extracted counts per pixel, blaze NOT removed, one row per
  echelle order; rows 36-43 hold the synthetic spectrum, the other rows the continuum only;
* wavelengths: the real HARPS-N solution in ``HIERARCH TNG DRS CAL TH DEG LL`` (3) and
  ``... COEFF LL{i}`` (i = 0..275), air, OBSERVATORY frame. A star of radial velocity ``rv``
  observed with barycentric Earth velocity ``berv`` appears at
  ``lambda_obs = lambda_rest * D(rv) / D(berv)`` ~ ``lambda_rest * D(rv - berv)``, the DRS
  convention (RV_bary = RV_obs + BERV); ``HIERARCH TNG DRS BERV`` holds ``berv``;
* counts = K * efficiency(row) * blaze(row, x) * spectrum, in electrons (``CCD CONAD`` = 1, so
  ADU = e-), with Gaussian photon + read noise, variance = counts + ``CCD SIGDET``^2, and
  unflagged cosmic-ray hits at ``Exposure.cosmic_rate`` (none by default). K is set so
  that the median continuum S/N per pixel over rows 36-43 equals the requested S/N;
  ``DRS SPE EXT SN{n}`` (n from 0) holds each row's median continuum S/N;
* the blaze file: same shape, the instrument's blaze-like shape per row, 1 at peak (all ones
  with ``blaze=False``); with ``blaze=False`` and no noise, rows 36-43 are the
  continuum-normalised spectrum times one constant; a noiseless file has a median continuum of
  10,000 counts over rows 36-43 and SN cards giving the S/N such counts would have
  (``HIERARCH SIM NOISELESS = T`` says no noise was added);
* the cards a real file carries (TELESCOP, INSTRUME, ``TNG OBS TARG NAME``, DATE-OBS, MJD-OBS,
  EXPTIME, RA/DEC in hours and RA-DEG/DEC-DEG, OBS-TYPE, ``TNG DRS VERSION``, ``DRS BJD``,
  ``DRS CAL LOC NBO``, ``DRS BLAZE FILE``, ``DRS CAL TH FILE``) plus the truth in
  ``HIERARCH SIM *`` cards (labels, RV, S/N, grid id).

``DRS BJD`` is the mid-exposure Julian date (UTC) without light-travel correction: a simulated
observatory has no position. :class:`E2dsSimulator` loads a grid once and writes many files.
"""
from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from astropy.io import fits
from astropy.time import Time

from .layout import FIRST_ROW, LAYOUT_VERSION, N_ORDERS, harpn_reference_coefficients, wavelength_solution
from .sampling.interpolation import GridInterpolator
from .instruments.registry import lookup
from .sampling import nuisance
from .sampling.resample import doppler_factors
from .forward import ForwardModel
from .synth.store import DenseGrid, GridStore

log = logging.getLogger(__name__)

N_ROWS = 69
N_PIXELS = 4096
SIGDET = lookup("HARPS-N").read_noise_e
"""Read-out noise (e-) of the instrument record, written in ``DRS CCD SIGDET`` and drawn in the noise."""
CONAD = 1.0
"""``DRS CCD CONAD`` (e-/ADU): 1, so the file's counts are electrons under any reading."""
NOISELESS_LEVEL = 10_000.0
"""Median continuum counts over rows 36-43 of a noiseless file."""
SCIENCE_ROWS = np.arange(FIRST_ROW, FIRST_ROW + N_ORDERS)
"""Rows 36-43: the canonical orders."""
OTHER_ROWS = np.setdiff1d(np.arange(N_ROWS), SCIENCE_ROWS)
DRS_VERSION = "HARPN_3.7"
DEFAULT_DATE = "2016-01-08T02:30:21.236"
P = "HIERARCH TNG "


@dataclass(frozen=True)
class Exposure:
    """One simulated observation.

    Attributes:
        teff, logg, mh, vsini: labels (K, dex, dex, km/s).
        snr: median continuum S/N per pixel over rows 36-43; None = noiseless.
        rv: the star's radial velocity (km/s); berv: barycentric Earth RV (km/s).
        blaze: multiply by the instrument blaze and order efficiencies.
        seed: seeds the noise (a ``torch.Generator``: the training sampler's ``render`` with a
            generator of the same seed draws the same noise and cosmics for rows 36-43).
        cosmic_rate: unflagged cosmic-ray hits per pixel (``nuisance.cosmics``); 0 = none.
        date_obs: ISO UTC start of exposure (names the files).
    """

    teff: float
    logg: float
    mh: float
    vsini: float
    snr: float | None = 100.0
    rv: float = 0.0
    berv: float = 0.0
    blaze: bool = True
    seed: int = 0
    cosmic_rate: float = 0.0
    date_obs: str = DEFAULT_DATE
    object_name: str = "SIMULATED"
    exptime: float = 900.0
    ra_deg: float = 101.2875
    dec_deg: float = -16.7161

    @property
    def stem(self) -> str:
        """``HARPN.<DATE-OBS with hyphens>``, the DRS file-name stem."""
        return "HARPN." + self.date_obs.replace(":", "-")


@dataclass(frozen=True)
class SimulatedFiles:
    e2ds: Path
    blaze: Path


def instrument_blaze() -> np.ndarray:
    """(69, 4096) float64 blaze-like shape per row, peak 1: ``sinc^2(h (x - c))``, x in [-1, 1],
    with a width and centre that drift smoothly with the row (edges at ~35-55% of the peak)."""
    rows = np.arange(N_ROWS)[:, None]
    x = np.linspace(-1.0, 1.0, N_PIXELS)[None, :]
    h = 0.5 + 0.06 * np.sin(rows / 11.0)
    c = 0.08 * np.cos(rows / 7.0)
    b = np.sinc(h * (x - c)) ** 2
    return b / b.max(axis=1, keepdims=True)


def order_efficiency() -> np.ndarray:
    """(69,) relative throughput per row (peak 1 near row 50; ~0.8-0.9 over rows 36-43)."""
    rows = np.arange(N_ROWS)
    return 0.25 + 0.75 * np.exp(-0.5 * ((rows - 50.0) / 22.0) ** 2)


@lru_cache(maxsize=1)
def _template() -> str:
    """The cards every simulated e2ds shares (wavelength solution, instrument, DRS), as FITS text."""
    coeffs, degree = harpn_reference_coefficients()
    h = _Cards()
    h["TELESCOP"] = ("TNG", "Telescope")
    h["INSTRUME"] = ("HARPN", "Instrument")
    h["OBSERVAT"] = ("TNG", "Observatory")
    h["OBS-TYPE"] = ("SCIENCE", "Observation type")
    h["EQUINOX"] = (2000.0, "")
    h[P + "DRS VERSION"] = (DRS_VERSION, "DRS version")
    h[P + "DRS CCD SIGDET"] = (SIGDET, "CCD Readout Noise [e-]")
    h[P + "DRS CCD CONAD"] = (CONAD, "CCD conv factor [e-/ADU]")
    h[P + "DRS CAL LOC NBO"] = (N_ROWS, "nb orders localised")
    h[P + "DRS CAL TH DEG LL"] = (degree, "degre polyn fit ll")
    for i, c in enumerate(coeffs):
        h[f"{P}DRS CAL TH COEFF LL{i}"] = (float(c), "coeff ll")
    h["HIERARCH SIM LAYOUT"] = (LAYOUT_VERSION, "simulated by survey-estimator")
    return h.image()


class _Cards:
    """Ordered FITS cards formatted once by astropy (``h[key] = value`` or ``(value, comment)``)."""

    def __init__(self):
        self.cards: list[fits.Card] = []

    def __setitem__(self, key: str, value) -> None:
        value, comment = value if isinstance(value, tuple) else (value, "")
        self.cards.append(fits.Card(key, value, comment))

    def image(self) -> str:
        return "".join(c.image for c in self.cards)


def write_primary(path: Path, data: np.ndarray, cards: str) -> None:
    """Write a single-HDU FITS file (float32 image + the given card text) atomically.

    Assembling the header text directly is ~10x faster than building an astropy Header of the
    ~380 cards an e2ds carries, which matters for mock archives of hundreds of files. Paths ending
    in ``.gz`` are gzip-compressed (as the TNG archive serves them).
    """
    data = np.ascontiguousarray(data, dtype=">f4")
    head = _Cards()
    head["SIMPLE"] = (True, "file does conform to FITS standard")
    head["BITPIX"] = (-32, "number of bits per data pixel")
    head["NAXIS"] = (data.ndim, "number of data axes")
    for i, n in enumerate(reversed(data.shape), start=1):
        head[f"NAXIS{i}"] = (n, f"length of data axis {i}")
    head["EXTEND"] = (True, "FITS dataset may contain extensions")
    text = head.image() + cards + "END".ljust(80)
    text += " " * (-len(text) % 2880)
    raw = data.tobytes()
    raw += b"\0" * (-len(raw) % 2880)
    tmp = path.with_name(path.name + ".part")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(tmp, "wb") as f:
        f.write(text.encode("ascii"))
        f.write(raw)
    os.replace(tmp, path)


class E2dsSimulator:
    """Writes simulated e2ds + blaze files from one loaded grid.

    Args:
        grid: a store URI, :class:`GridStore`, :class:`DenseGrid` or a ready :class:`ForwardModel`
            (THE forward model: the same physics the sampler and the fit use).
        device: torch device for the rendering.
    """

    def __init__(self, grid: str | os.PathLike | GridStore | DenseGrid | ForwardModel, device: str = "cpu"):
        if isinstance(grid, ForwardModel):
            self.model = grid
        else:
            if isinstance(grid, (str, os.PathLike)):
                grid = GridStore(str(grid))
            if isinstance(grid, GridStore):
                grid = grid.load_dense()
            self.model = ForwardModel.from_interpolator(GridInterpolator.from_dense(grid, device=device), progress=False)
        self.grid_id = self.model.grid_id
        coeffs, degree = harpn_reference_coefficients()
        self.wave = wavelength_solution(coeffs, degree)  # (69, 4096) air A
        self.blaze = instrument_blaze()
        self.efficiency = order_efficiency()

    def spectra(self, exposures: list[Exposure]) -> np.ndarray:
        """(N, 8, 4096) float64 continuum-normalised spectra on rows 36-43, observatory frame."""
        labels = torch.tensor([[e.teff, e.logg, e.mh, e.vsini] for e in exposures], dtype=torch.float64)
        factor = doppler_factors(torch.tensor([e.rv for e in exposures]), torch.tensor([e.berv for e in exposures]))
        with torch.no_grad():
            out = self.model.observed(labels, factor, self.wave[FIRST_ROW : FIRST_ROW + N_ORDERS])
        return out.double().cpu().numpy()

    def expected_counts(self, exposure: Exposure, spectrum: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noiseless counts of one exposure.

        Args:
            spectrum: (8, 4096) continuum-normalised spectrum for rows 36-43 (:meth:`spectra`).
        Returns:
            (counts (69, 4096) float64, continuum counts (69, 4096) float64, blaze (69, 4096)).
        """
        if exposure.blaze:
            blaze, eff = self.blaze, self.efficiency
        else:
            blaze, eff = np.ones_like(self.blaze), np.ones_like(self.efficiency)
        cont = eff[:, None] * blaze
        spec = np.ones((N_ROWS, N_PIXELS))
        spec[SCIENCE_ROWS] = spectrum
        if exposure.snr is not None and not exposure.snr > 0:
            raise ValueError(f"S/N must be > 0, got {exposure.snr}")
        snr = torch.tensor([float("inf") if exposure.snr is None else float(exposure.snr)])
        k = float(nuisance.counts_scale(torch.as_tensor(cont[SCIENCE_ROWS])[None], snr, SIGDET)[0])
        if exposure.snr is None:
            k *= NOISELESS_LEVEL
        return k * cont * spec, k * cont, blaze

    def counts(self, exposure: Exposure, spectrum: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(counts (69, 4096) float32 with noise unless noiseless, blaze (69, 4096) float32,
        per-row median continuum S/N (69,)) of one exposure.

        The noise (and cosmics) of rows 36-43 are drawn first, in float32, by
        :func:`~survey_estimator.sampling.nuisance.expose` from a generator seeded with
        ``exposure.seed``, as the sampler draws a spectrum's; then those of the other rows."""
        counts, cont, blaze = self.expected_counts(exposure, spectrum)
        counts = counts.astype(np.float32)
        if exposure.snr is not None:
            g = torch.Generator().manual_seed(exposure.seed)
            for rows in (SCIENCE_ROWS, OTHER_ROWS):
                counts[rows] = nuisance.expose(torch.from_numpy(counts[rows])[None], SIGDET, exposure.cosmic_rate, g)[0].numpy()
        c_row = np.median(cont, axis=1)
        sn = c_row / np.sqrt(c_row + SIGDET**2)
        return counts, blaze.astype(np.float32), sn

    def header(self, e: Exposure, sn: np.ndarray, blaze_name: str) -> str:
        """The e2ds header of one exposure as FITS card text (without the structural cards)."""
        h = _Cards()
        t = Time(e.date_obs, format="isot", scale="utc")
        h["DATE-OBS"] = (e.date_obs, "start of obs. (UTC)")
        h["MJD-OBS"] = (float(t.mjd), "Modified Julian Date (UTC) at start")
        h["EXPTIME"] = (float(e.exptime), "Effective exposure time (in secs)")
        h["RA-DEG"] = (float(e.ra_deg), "Right ascension (degrees as float)")
        h["DEC-DEG"] = (float(e.dec_deg), "Declination (degrees as float)")
        h["RA"] = (float(e.ra_deg) / 15.0, "Right Ascension (hours as float)")
        h["DEC"] = (float(e.dec_deg) / 15.0, "Declination (hours as float)")
        h[P + "OBS TARG NAME"] = (e.object_name, "Target name")
        h[P + "DRS BERV"] = (float(e.berv), "Barycentric Earth RV [km/s]")
        h[P + "DRS BJD"] = (float(t.jd) + e.exptime / 2 / 86400.0, "JD(UTC) mid-exposure")
        h[P + "DRS BLAZE FILE"] = blaze_name
        h[P + "DRS CAL TH FILE"] = e.stem + "_wave_A.fits"
        for n, v in enumerate(sn):
            h[f"{P}DRS SPE EXT SN{n}"] = (round(float(v), 2), f"S_N order center{n}")
        h["HIERARCH SIM TEFF"] = float(e.teff)
        h["HIERARCH SIM LOGG"] = float(e.logg)
        h["HIERARCH SIM MH"] = float(e.mh)
        h["HIERARCH SIM VSINI"] = float(e.vsini)
        h["HIERARCH SIM RV"] = float(e.rv)
        h["HIERARCH SIM SNR"] = -1.0 if e.snr is None else float(e.snr)
        h["HIERARCH SIM NOISELESS"] = e.snr is None
        h["HIERARCH SIM BLAZE"] = bool(e.blaze)
        h["HIERARCH SIM GRID"] = self.grid_id
        return _template() + h.image()

    def write(self, out: str | os.PathLike, exposure: Exposure, blaze_name: str | None = None) -> SimulatedFiles:
        """Write one exposure; ``out`` is a file path or a directory (default DRS file name)."""
        return self.write_many(out, [exposure], blaze_name=blaze_name)[0]

    def write_many(self, out: str | os.PathLike, exposures: list[Exposure], batch_size: int = 32,
                   blaze_name: str | None = None) -> list[SimulatedFiles]:
        """Write many exposures, rendering them in batches.

        Args:
            out: a directory (files get their DRS names ``HARPN.<date>_e2ds_A.fits``), or, for a
                single exposure, a file path.
            blaze_name: share one blaze file of this name in the directory (written once); default
                one blaze file per exposure, named like its e2ds.
        """
        out = Path(out)
        single = len(exposures) == 1 and not out.is_dir() and out.suffix in (".fits", ".gz")
        folder = out.parent if single else out
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for start in range(0, len(exposures), batch_size):
            chunk = exposures[start : start + batch_size]
            spectra = self.spectra(chunk)
            for e, s in zip(chunk, spectra):
                path = out if single else folder / f"{e.stem}_e2ds_A.fits"
                counts, blaze, sn = self.counts(e, s)
                bname = blaze_name or _blaze_name(path)
                if blaze_name and not e.blaze:
                    raise ValueError("a shared blaze file cannot serve exposures written with blaze=False")
                bpath = folder / bname
                if not (blaze_name and bpath.exists()):
                    bh = _Cards()
                    bh["TELESCOP"] = "TNG"
                    bh["INSTRUME"] = "HARPN"
                    bh["DATE-OBS"] = e.date_obs
                    bh[P + "DRS VERSION"] = DRS_VERSION
                    bh["HIERARCH SIM BLAZE"] = bool(e.blaze)
                    write_primary(bpath, blaze, bh.image())
                write_primary(path, counts, self.header(e, sn, bname))
                written.append(SimulatedFiles(path, bpath))
                log.debug("wrote %s", path)
        return written


def _blaze_name(e2ds_path: Path) -> str:
    name = e2ds_path.name
    for suffix in (".fits.gz", ".fits"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        stem = name
    stem = stem[: -len("_e2ds_A")] if stem.endswith("_e2ds_A") else stem
    return f"{stem}_blaze_A.fits"


@lru_cache(maxsize=2)
def simulator_for(uri: str, device: str = "cpu") -> E2dsSimulator:
    """One simulator per grid URI and device per process (the grid is loaded once)."""
    return E2dsSimulator(uri, device=device)


def write_e2ds(path: str | os.PathLike, labels, *, grid: str | E2dsSimulator, snr: float | None = 100.0,
               rv: float = 0.0, berv: float = 0.0, blaze: bool = True, seed: int = 0,
               date_obs: str = DEFAULT_DATE, object_name: str = "SIMULATED", **exposure) -> SimulatedFiles:
    """Write one simulated e2ds (+ blaze) file; the grid is loaded once per process and URI.

    Args:
        path: file path or directory (then the DRS name ``HARPN.<date>_e2ds_A.fits``).
        labels: (Teff K, log g, [M/H], v sin i km/s).
        grid: store URI or an :class:`E2dsSimulator`.
        snr: median continuum S/N per pixel over rows 36-43; None = noiseless.
        exposure: other :class:`Exposure` fields (exptime, ra_deg, dec_deg).
    Returns:
        the paths written.
    """
    sim = grid if isinstance(grid, E2dsSimulator) else simulator_for(str(grid))
    teff, logg, mh, vsini = (float(v) for v in labels)
    e = Exposure(teff, logg, mh, vsini, snr=snr, rv=rv, berv=berv, blaze=blaze, seed=seed, date_obs=date_obs,
                 object_name=object_name, **exposure)
    return sim.write(path, e)
