"""Open a source (path, bytes or file-like; gzip by magic bytes) and decide what it holds.

Everything is decided by content, never by file name: FITS or plain text by the first bytes; the
instrument from ``INSTRUME`` (or the ``HIERARCH TNG`` / ``HIERARCH ESO DRS`` cards; any other
spectrograph is kept by its ``INSTRUME`` name, none at all is "unknown"), science vs calibration
from ``DPR CATG`` / ``OBS-TYPE`` / ``PRO CATG``, and the format from the HDU structure.
"""
from __future__ import annotations

import gzip
import io
import logging
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from astropy.io import fits

from ..observation import ReadError
from . import columns
from .registry import UNKNOWN, Instrument, from_signature, lookup

log = logging.getLogger(__name__)

Source = Union[str, Path, tuple[str, Union[bytes, BinaryIO]]]
"""A path, or ``(name, bytes)`` / ``(name, file-like)`` for data read from object storage."""

GZIP_MAGIC = b"\x1f\x8b"
FITS_MAGIC = b"SIMPLE  ="
BLOCK = 2880

SPECTRUM_PRODUCTS = ("S2D_A", "S2D_BLAZE_A", "S1D_A", "E2DS_A", "SCIENCE.SPECTRUM")
"""``PRO CATG`` / ``PRODCATG`` values of products that hold a science spectrum."""


def source_name(source: Source) -> str:
    """The name used in messages for ``source``."""
    if isinstance(source, tuple):
        return str(source[0])
    return str(source)


def read_bytes(source: Source) -> tuple[str, bytes, bool]:
    """Return ``(name, raw bytes, gzipped)``, gunzipped when the content starts with the gzip magic.

    Raises:
        ReadError: missing or unreadable file, empty content, corrupt gzip.
    """
    name = source_name(source)
    try:
        if isinstance(source, tuple):
            data = source[1]
            raw = data if isinstance(data, (bytes, bytearray, memoryview)) else data.read()
        else:
            raw = Path(source).read_bytes()
    except OSError as exc:
        raise ReadError(name, f"cannot read file ({exc.strerror or exc})") from exc
    raw = bytes(raw)
    if not raw:
        raise ReadError(name, "empty file (0 bytes)")
    gzipped = raw[:2] == GZIP_MAGIC
    if gzipped:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ReadError(name, f"corrupt or truncated gzip data ({exc})") from exc
        if not raw:
            raise ReadError(name, "empty file (gzip of nothing)")
    return name, raw, gzipped


def is_fits(raw: bytes) -> bool:
    """True when ``raw`` starts like a FITS file."""
    return raw[: len(FITS_MAGIC)] == FITS_MAGIC


def open_fits(source: Source) -> tuple[str, fits.HDUList]:
    """Open ``source`` fully in memory and check that no HDU is cut short.

    Returns:
        (name, HDUList) with all headers parsed; data are read on access.
    Raises:
        ReadError: not FITS, truncated, or corrupt headers.
    """
    name, raw, gzipped = read_bytes(source)
    return fits_from_bytes(name, raw, gzipped)


def fits_from_bytes(name: str, raw: bytes, gzipped: bool = False) -> tuple[str, fits.HDUList]:
    """:func:`open_fits` on bytes already read (and gunzipped) by :func:`read_bytes`."""
    if not is_fits(raw):
        what = "gzip-compressed content is not a FITS file" if gzipped else "not a FITS file"
        raise ReadError(name, f"{what} (starts with {raw[:16]!r})")
    if len(raw) < BLOCK:
        raise ReadError(name, f"truncated FITS file ({len(raw)} bytes, less than one 2880-byte header block)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=False)
            for i in range(len(hdul)):
                info = hdul.fileinfo(i)
                if info["datLoc"] + info["datSpan"] > len(raw) + BLOCK - 1:
                    raise ReadError(name, f"truncated FITS file (HDU {i} needs {info['datLoc'] + info['datSpan']} bytes, file has {len(raw)})")
    except ReadError:
        raise
    except Exception as exc:  # astropy raises many types for corrupt headers
        raise ReadError(name, f"corrupt or truncated FITS file ({type(exc).__name__}: {exc})") from exc
    return name, hdul


@dataclass(frozen=True)
class Cards:
    """Header lookup that tries the instrument's hierarchical prefix, then the other one.

    ``cards.get("DRS BERV")`` finds ``HIERARCH TNG DRS BERV`` or ``HIERARCH ESO DRS BERV``.
    """

    header: fits.Header
    prefix: str

    def get(self, key: str, default=None):
        for p in (self.prefix, "ESO" if self.prefix == "TNG" else "TNG"):
            full = f"{p} {key}"
            if full in self.header:
                return _clean(self.header[full], default)
        return _clean(self.header.get(key, default), default) if key in self.header else default

    def float(self, key: str) -> float | None:
        v = self.get(key)
        try:
            v = float(v)
        except (TypeError, ValueError):
            return None
        return v if np.isfinite(v) else None

    def has(self, key: str) -> bool:
        return self.get(key) is not None


def _clean(value, default):
    if value is None or isinstance(value, fits.card.Undefined):
        return default
    if isinstance(value, str):
        value = value.strip()
        if value.lower() in ("", "nan"):
            return default
    return value


def identify_instrument(header: fits.Header | None, name: str | None = None) -> tuple[Instrument, str, str | None]:
    """The instrument of a primary header: its record, its name, and a note when inferred.

    Args:
        header: the primary header (None: only ``name`` tells).
        name: the instrument the user names (``--instrument``), taken whatever the header says.
    Returns:
        (the :mod:`.registry` record (:data:`~.registry.UNKNOWN` for a spectrograph without one),
        the name: the record's, else ``INSTRUME`` as written (e.g. "UVES"), else "unknown";
        a note saying how it was inferred, or None when ``INSTRUME`` says it). Without
        ``INSTRUME`` a record's signature cards tell (``HIERARCH TNG`` cards: HARPS-N;
        ``HIERARCH ESO DRS`` cards: the HARPS DRS, whose 1D products often lack ``INSTRUME``).
    """
    if name:
        record = lookup(name)
        return record, (record.name if record is not UNKNOWN else name), f"instrument {name} given by the user"
    raw = str(header.get("INSTRUME", "") or "").strip()
    if raw:
        record = lookup(raw)
        return record, (record.name if record is not UNKNOWN else raw), None
    record = from_signature(header.keys())
    if record is not None:
        return record, record.name, f"no INSTRUME card: {record.name} from its HIERARCH {record.signature.strip()} cards"
    return UNKNOWN, "unknown", "no INSTRUME card and no pipeline cards: instrument unknown"


def card_prefix(record: Instrument, header: fits.Header) -> str:
    """Hierarchical card prefix: the record's, else "TNG" when such cards exist, else "ESO"."""
    if record.prefix:
        return record.prefix
    return "TNG" if any(k.startswith("TNG ") for k in header.keys()) else "ESO"


def check_science(name: str, header: fits.Header, cards: Cards) -> None:
    """Refuse calibration frames and products that are not spectra (CCF, blaze, wave, ...).

    Raises:
        ReadError: with the header values that tell.
    """
    catg = str(cards.get("DPR CATG", "") or "").upper()
    dpr_type = str(cards.get("DPR TYPE", "") or "")
    if catg and catg != "SCIENCE":
        raise ReadError(name, f"calibration frame, not a science spectrum (DPR CATG={catg!r}, DPR TYPE={dpr_type!r})")
    obs_type = str(header.get("OBS-TYPE", "") or "").strip().upper()
    if obs_type and obs_type != "SCIENCE":
        raise ReadError(name, f"calibration frame, not a science spectrum (OBS-TYPE={obs_type!r})")
    pro = str(cards.get("PRO CATG", "") or header.get("PRODCATG", "") or "").strip().upper()
    if pro and pro not in SPECTRUM_PRODUCTS:
        raise ReadError(name, f"not a spectrum product (PRO CATG={pro!r}; expected one of {', '.join(SPECTRUM_PRODUCTS)})")


def spectrum_tables(hdul: fits.HDUList) -> list[int]:
    """Indices of the binary tables with a recognised wavelength column (:mod:`.columns`)."""
    out = []
    for i, hdu in enumerate(hdul):
        if isinstance(hdu, fits.BinTableHDU) and columns.find(hdu.columns.names, columns.WAVE):
            out.append(i)
    return out


def first_image(hdul: fits.HDUList) -> int | None:
    """Index of the first image HDU (primary or extension) holding data, or None."""
    for i, hdu in enumerate(hdul):
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.header.get("NAXIS", 0) and hdu.data is not None:
            return i
    return None


WAVE_EXTNAMES = ("WAVE", "WAVELENGTH", "WAV", "LAMBDA", "WL", "WAVEDATA")


def wavelength_image(hdul: fits.HDUList, flux_index: int) -> int | None:
    """Index of the image HDU holding wavelengths for the image at ``flux_index``: same shape and
    an EXTNAME starting with one of :data:`WAVE_EXTNAMES` (or containing "WAVE"), or, unnamed,
    values that all lie in 1000-30000 (A) or 100-3000 (nm) and run monotonically along each row."""
    shape = hdul[flux_index].data.shape
    unnamed = []
    for i, hdu in enumerate(hdul):
        if i == flux_index or not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) or hdu.data is None:
            continue
        if hdu.data.shape != shape:
            continue
        extname = hdu.name.upper()
        if any(extname.startswith(n) for n in WAVE_EXTNAMES) or "WAVE" in extname:
            return i
        if not extname or extname == "PRIMARY":
            unnamed.append(i)
    for i in unnamed:
        w = np.asarray(hdul[i].data, dtype=np.float64)
        if not np.isfinite(w).all():
            continue
        in_range = (1000 < w.min() and w.max() < 30000) or (100 < w.min() and w.max() < 3000)
        d = np.diff(np.atleast_2d(w), axis=-1)
        if in_range and all(np.all(r > 0) or np.all(r < 0) for r in d):
            return i
    return None


def detect_format(name: str, hdul: fits.HDUList) -> str:
    """Which reader fits this HDU structure: "table", "s2d", "e2ds", "echelle" or "s1d".

    - a binary table with a wavelength column (:mod:`.columns`): "table" (also the ESO Phase-3
      ADP and the new-DRS S1D);
    - ``SCIDATA`` + ``WAVEDATA_*`` extensions: "s2d";
    - a 2D image: with ``DRS CAL TH DEG LL`` cards "e2ds", with a wavelength image of the same
      shape "echelle", with IRAF ``BANDID`` cards (one spectrum and its bands) "s1d";
    - a 1D image: "s1d" (a wavelength WCS in its header).

    Raises:
        ReadError: no spectrum data, missing wavelength extension or cards, wrong shape.
    """
    names = {h.name.upper() for h in hdul}
    if spectrum_tables(hdul):
        return "table"
    if "SCIDATA" in names:
        if not any(n.startswith("WAVEDATA") for n in names):
            raise ReadError(name, "missing wavelength solution: SCIDATA without WAVEDATA_* extension")
        return "s2d"
    index = first_image(hdul)
    if index is None:
        if any(isinstance(h, fits.BinTableHDU) for h in hdul):
            return "table"  # its reader says which column is missing
        raise ReadError(name, f"no spectrum data (extensions: {', '.join(h.name for h in hdul)})")
    image = hdul[index]
    shape = tuple(n for n in image.data.shape if n > 1) or image.data.shape
    header = image.header
    if len(shape) == 2:
        if any(k.endswith("DRS CAL TH DEG LL") for k in hdul[0].header.keys()) or any(k.endswith("DRS CAL TH DEG LL") for k in header.keys()):
            return "e2ds"
        if wavelength_image(hdul, index) is not None:
            return "echelle"
        if "BANDID1" in header and "CRVAL1" in header:
            return "s1d"
        raise ReadError(name, f"missing wavelength solution: a {shape[0]} x {shape[1]} image without wavelength cards "
                              "(DRS CAL TH COEFF LL) or a wavelength image/extension of the same shape")
    if len(shape) == 1:
        return "s1d"
    raise ReadError(name, f"wrong shape: image has {len(shape)} axes {image.data.shape} (expected a 1D or 2D spectrum)")
