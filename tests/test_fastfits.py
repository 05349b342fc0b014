"""The targeted header scan (instruments/fastfits.py) against astropy, the reference reader."""
from __future__ import annotations

import gzip
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from survey_estimator.instruments.fastfits import BLOCK, data_bytes, primary_image, scan_header

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
REAL = sorted(p for p in SHARED.rglob("*") if p.is_file() and p.name.endswith((".fits", ".fits.gz")))
LOCAL = Path(__file__).parent / "data"


def _raw(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


def test_real_files_present():
    assert len(REAL) >= 5, f"expected the real files under {SHARED}"


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_header_values_from_the_fast_path_equal_astropys_on_every_real_file(path):
    """Every value card of every HDU: same keys, same value and type as astropy's header once the
    file is opened as the readers open it (``fileinfo`` of every HDU: astropy's silent fix)."""
    raw = _raw(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdul = fits.open(path, memmap=False)
        infos = [hdul.fileinfo(i) for i in range(len(hdul))]
        offset = 0
        for i, hdu in enumerate(hdul):
            fast, start = scan_header(raw, offset)
            assert start == infos[i]["datLoc"], (path.name, i)
            ref = hdu.header
            keys = list(dict.fromkeys(k for k in ref.keys() if k not in ("", "COMMENT", "HISTORY")))
            assert list(fast) == keys, (path.name, i)
            bad = [(k, ref[k], fast[k]) for k in keys if not _same(ref[k], fast[k])]
            assert not bad, (path.name, i, bad[:5])
            assert data_bytes(fast) == infos[i]["datSpan"] - (-data_bytes(fast) % BLOCK)
            offset = start + infos[i]["datSpan"]
        hdul.close()


@pytest.mark.parametrize("name", ["HARPS.2003-12-13T06-19-48.371_e2ds_A.fits", "HARPS.2003-12-12T21-42-45.093_blaze_A.fits"])
def test_primary_image_equals_astropys_data(name):
    raw = (LOCAL / name).read_bytes()
    image = primary_image(raw)
    assert image is not None
    np.testing.assert_array_equal(image.data, fits.getdata(LOCAL / name))


def test_primary_image_refuses_files_with_extensions_or_cut_short():
    s2d = _raw(LOCAL / "HD41248_1_1_S2D_A.rows80-95.fits.gz")
    assert primary_image(s2d) is None  # an empty primary and extensions: astropy's path
    e2ds = (LOCAL / "HARPS.2003-12-13T06-19-48.371_e2ds_A.fits").read_bytes()
    assert primary_image(e2ds[: len(e2ds) - 2 * BLOCK]) is None


def test_e2ds_read_from_the_card_scan_equals_the_astropy_read():
    """The real HARPS e2ds and its blaze: the observation from the fast path (no astropy) equals
    the one from astropy's HDUList, array for array and field for field."""
    from dataclasses import fields

    from survey_estimator.instruments import e2ds, read_unchecked
    from survey_estimator.instruments.detect import Cards, card_prefix, fits_from_bytes, identify_instrument

    path = LOCAL / "HARPS.2003-12-13T06-19-48.371_e2ds_A.fits"
    blaze = LOCAL / "HARPS.2003-12-12T21-42-45.093_blaze_A.fits"
    fast = read_unchecked(str(path), blaze=str(blaze))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        name, hdul = fits_from_bytes(str(path), path.read_bytes())
        record, instrument, _ = identify_instrument(hdul[0].header)
        ref = e2ds.read(name, hdul, Cards(hdul[0].header, card_prefix(record, hdul[0].header)), instrument,
                        blaze=lambda header: str(blaze))
    assert fast.blaze_corrected and fast.rv_kms is None
    for f in fields(ref):
        a, b = getattr(fast, f.name), getattr(ref, f.name)
        if isinstance(b, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f.name)
        elif f.name not in ("notes", "normalised", "normalised_source", "coverage"):  # set after the reader
            assert _same(a, b) or a == b, (f.name, a, b)
