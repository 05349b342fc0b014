"""Every kind of unusable input raises the one typed error, naming the file and the reason."""
from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
from astropy.io import fits

from survey_estimator.instruments import read_observation
from survey_estimator.observation import ReadError

E2DS = "HARPS.2003-12-13T06-19-48.371_e2ds_A.fits"
BLAZE = "HARPS.2003-12-12T21-42-45.093_blaze_A.fits"
S1D = "HARPS.2010-09-18T23-42-36.178_s1d_A.4900-5500.fits"
S2D = "HD41248_1_1_S2D_A.rows80-95.fits.gz"
CCF = "r.HARPN.2015-08-03T14-17-24.899_CCF_A.fits"


def _edit_e2ds(data_dir, path, header_edit=None, data_edit=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(data_dir / E2DS) as h:
            header, data = h[0].header.copy(), h[0].data.copy()
        if header_edit:
            header_edit(header)
        if data_edit is not None:
            data = data_edit(data)
        fits.PrimaryHDU(data=data, header=header).writeto(path)
    return path


def _drop_coeffs(h):
    for k in [k for k in h if "COEFF LL" in k]:
        del h[k]


def _set(key, value):
    def edit(h):
        h[key] = value

    return edit


def _nan_band_rows(d):
    d = d.astype(np.float32)
    d[38:49] = np.nan
    return d


def make_case(kind, tmp_path, data_dir):
    """Write the bad input for ``kind``; return its path (or (name, bytes))."""
    p = tmp_path / f"{kind}.fits"
    raw_e2ds = (data_dir / E2DS).read_bytes()
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated":
        p.write_bytes(raw_e2ds[: len(raw_e2ds) // 2])
    elif kind == "garbage":
        p.write_bytes(np.random.default_rng(0).bytes(50_000))
    elif kind == "text":
        p.write_text("WAVE FLUX\n5000 1.0\n5001 0.9\n")
    elif kind == "gzip_garbage":
        p.write_bytes(gzip.compress(np.random.default_rng(1).bytes(20_000)))
    elif kind == "corrupt_gzip":
        p.write_bytes(gzip.compress(raw_e2ds)[:5000])
    elif kind == "calibration":
        return data_dir / BLAZE
    elif kind == "not_spectrum":
        return data_dir / CCF
    elif kind == "missing_cards":
        _edit_e2ds(data_dir, p, _drop_coeffs)
    elif kind == "all_nan":
        _edit_e2ds(data_dir, p, data_edit=_nan_band_rows)
    elif kind == "wrong_shape":
        _edit_e2ds(data_dir, p, data_edit=lambda d: np.stack([d, d]))
    elif kind == "no_coverage":
        with fits.open(data_dir / S1D) as h:
            hdr = h[0].header.copy()
            hdr["CRVAL1"] = 6000.0
            fits.PrimaryHDU(data=h[0].data, header=hdr).writeto(p)
    elif kind == "no_data":
        fits.PrimaryHDU(header=fits.getheader(data_dir / S1D)).writeto(p)
    elif kind == "s2d_without_wave":
        with fits.open(data_dir / S2D) as h:
            fits.HDUList([e.copy() for e in h if not e.name.startswith("WAVEDATA")]).writeto(p)
    elif kind == "s2d_shape_mismatch":
        with fits.open(data_dir / S2D) as h:
            hdus = [e.copy() for e in h]
            for e in hdus:
                if e.name.startswith("WAVEDATA"):
                    e.data = e.data[:, :5000]
            fits.HDUList(hdus).writeto(p)
    elif kind == "s1d_without_wcs":
        with fits.open(data_dir / S1D) as h:
            hdr = h[0].header.copy()
            del hdr["CRVAL1"], hdr["CDELT1"]
            fits.PrimaryHDU(data=h[0].data, header=hdr).writeto(p)
    elif kind == "bytes_garbage":
        return ("s3://archive/2016-01-08/HARPN.x_e2ds_A.fits", b"\x00" * 3000)
    else:
        raise KeyError(kind)
    return p


CASES = {
    "empty": "empty file",
    "truncated": "truncated",
    "garbage": "not a FITS file",
    "text": "only 2 rows: too few pixels",
    "gzip_garbage": "gzip-compressed content is not a FITS file or a plain-text spectrum",
    "corrupt_gzip": "corrupt or truncated gzip",
    "calibration": "calibration frame",
    "not_spectrum": "not a spectrum product",
    "missing_cards": "missing wavelength solution",
    "all_nan": "all-NaN",
    "wrong_shape": "wrong shape",
    "no_coverage": "no coverage of 5050-5350 A",
    "no_data": "no spectrum data",
    "s2d_without_wave": "missing wavelength solution",
    "s2d_shape_mismatch": "wrong shape",
    "s1d_without_wcs": "missing wavelength solution",
    "bytes_garbage": "not a FITS file",
}


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input_raises_read_error(kind, tmp_path, data_dir):
    source = make_case(kind, tmp_path, data_dir)
    name = source[0] if isinstance(source, tuple) else str(source)
    with pytest.raises(ReadError) as info:
        read_observation(source)
    err = info.value
    assert err.path == name and str(err).startswith(name + ": ")
    assert CASES[kind] in err.reason, err.reason


def test_missing_file(tmp_path):
    with pytest.raises(ReadError, match="cannot read file"):
        read_observation(tmp_path / "nope.fits")
