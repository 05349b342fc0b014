"""Spectra from anywhere (issue 10): every supported format, read by content, on cut-down copies of
real public spectra (tests/data, see ORIGIN.md), and odd inputs written here from those copies,
each with its clear error, flag or note.

The rest-frame check is the one of the real-file table in docs/data.md: after preprocessing, the
median offset of the three Mg b lines (5167.32, 5172.68, 5183.60 A, air) is within 0.03 A.
"""
from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest
from astropy.io import fits

from survey_estimator.catalogue.read import ReadOptions, read_one
from survey_estimator.instruments import read_observation, read_unchecked
from survey_estimator.observation import ReadError
from survey_estimator.preprocess import Flag, preprocess, vacuum_to_air
from survey_estimator.rv import line_offsets

PROCYON = "HARPS.GBOG_Procyon.5095-5255.fits"  # 1D image, linear WCS, CTYPE1 AWAV, no instrument cards
MIKE = "hd140283.5095-5255.fits"  # IRAF 1D (CD1_1, DC-FLAG 0), INSTRUME MIKE-Blue, SLITSIZE 1.0
BARE = "hd122563.5095-5255.fits"  # 1D image with CRVAL1/CDELT1/CRPIX1 and nothing else
SCO = "HARPS.Archive_18Sco_R32K.fits"  # iSpec table, one row per pixel: waveobs, flux, err
S1D_TABLE = "HD41248_1_1_S1D_A.5160-5195.fits.gz"  # ESPRESSO S1D table (vacuum + air wavelengths, quality)
E2DS = "HARPS.2003-12-13T06-19-48.371_e2ds_A.fits"
REST_A = 0.03


def mgb_offset(result) -> float:
    """Median offset (A) of the three Mg b lines from rest in a preprocessed spectrum."""
    off = line_offsets(result.wave, result.flux, result.mask)
    assert np.isfinite(off).sum() >= 2, off
    return float(np.nanmedian(off))


def procyon(data_dir) -> tuple[np.ndarray, np.ndarray, fits.Header]:
    """(air wavelengths A, flux, header) of the cut-down Procyon spectrum."""
    with fits.open(data_dir / PROCYON) as h:
        header, flux = h[0].header.copy(), h[0].data.astype(np.float64)
    wave = header["CRVAL1"] + (np.arange(flux.size) + 1 - header["CRPIX1"]) * header["CDELT1"]
    return wave, flux, header


def air_to_vacuum(air: np.ndarray) -> np.ndarray:
    """Vacuum wavelengths whose :func:`vacuum_to_air` is ``air`` (fixed-point iteration)."""
    vac = air * 1.000278
    for _ in range(5):
        vac = vac * air / vacuum_to_air(vac)
    return vac


def write_table(path, columns: dict, one_row: bool = False, header: fits.Header | None = None):
    """A FITS binary table: one row per pixel, or one row of array columns."""
    cols = []
    for name, values in columns.items():
        values = np.asarray(values)
        if one_row:
            cols.append(fits.Column(name=name, format=f"{values.shape[-1]}D", array=values.reshape(-1, values.shape[-1])))
        else:
            cols.append(fits.Column(name=name, format="D", array=values))
    fits.HDUList([fits.PrimaryHDU(header=header), fits.BinTableHDU.from_columns(cols)]).writeto(path)
    return path


def write_image(path, flux, header: fits.Header, *extensions: fits.ImageHDU):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits.HDUList([fits.PrimaryHDU(data=flux, header=header), *extensions]).writeto(path)
    return path


def wcs_header(**cards) -> fits.Header:
    h = fits.Header()
    for k, v in cards.items():
        h[k.replace("_", "-") if k == "DC_FLAG" else k] = v
    return h


# --- the formats, on the real cut-down files -------------------------------------------------------


def test_1d_image_without_instrument_cards(data_dir):
    obs = read_observation(data_dir / PROCYON)
    assert (obs.instrument, obs.kind) == ("unknown", "s1d")
    assert (obs.medium, obs.medium_source) == ("air", "header")  # CTYPE1 = 'AWAV'
    assert (obs.resolution, obs.resolution_source) == (115000.0, "assumed")
    assert obs.frame_source == "assumed" and obs.normalised
    assert obs.assumed == ["instrument", "resolution", "frame"]
    assert obs.wave[0] == pytest.approx(5095.0, abs=0.01) and np.diff(obs.wave) == pytest.approx(0.01)
    assert not any("non-uniform" in n for n in obs.notes)
    result = preprocess(obs)
    assert Flag.RESOLUTION_ASSUMED in result.flags and Flag.MEDIUM_ASSUMED not in result.flags
    assert Flag.RV_MEASURED in result.flags and abs(result.rv_kms) < 2  # the library is in the rest frame
    assert abs(mgb_offset(result)) < REST_A
    given = read_observation(data_dir / PROCYON, resolution=115000)
    assert given.resolution_source == "user" and Flag.RESOLUTION_ASSUMED not in preprocess(given).flags


def test_mike_iraf_spectrum_resolution_from_instrument_record(data_dir):
    obs = read_observation(data_dir / MIKE)
    assert (obs.instrument, obs.kind, obs.object) == ("MIKE-Blue", "s1d", "HD140283")
    assert (obs.resolution, obs.resolution_source) == (28000.0, "instrument")  # 1.0 arcsec slit
    assert obs.ra_deg == pytest.approx(235.7597083)  # RA-D: RA is sexagesimal
    assert obs.medium_source == "assumed" and obs.normalised
    result = preprocess(obs)
    assert result.resolution == 28000.0 and Flag.DEGRADED_RESOLUTION not in result.flags  # kept at its own R
    assert Flag.MEDIUM_ASSUMED in result.flags and Flag.RESOLUTION_ASSUMED not in result.flags
    assert abs(mgb_offset(result)) < REST_A


def test_1d_image_with_nothing_but_a_wcs(data_dir):
    obs = read_observation(data_dir / BARE)
    assert obs.instrument == "unknown" and obs.assumed == ["instrument", "resolution", "medium", "frame"]
    # 0.033 A pixels cannot carry R = 115,000: two pixels per resolution element
    assert obs.resolution == pytest.approx(5175 / (2 * 0.03296), rel=0.02) and obs.resolution_source == "assumed"
    assert abs(mgb_offset(preprocess(obs))) < REST_A


def test_table_one_row_per_pixel_partial_coverage(data_dir):
    obs = read_observation(data_dir / SCO, resolution=32000)
    assert (obs.kind, obs.instrument, obs.resolution, obs.resolution_source) == ("table", "unknown", 32000.0, "user")
    assert obs.coverage == pytest.approx(0.53, abs=0.02)  # 5143-5301 A of 5050-5350 A
    assert any("non-uniform sampling" in n for n in obs.notes)
    np.testing.assert_allclose(obs.variance, fits.getdata(data_dir / SCO, 1)["err"] ** 2)
    result = preprocess(obs)
    assert Flag.PARTIAL_COVERAGE in result.flags and Flag.ORDERS_MISSING in result.flags
    assert result.resolution == 32000.0
    assert abs(mgb_offset(result)) < REST_A


def test_espresso_s1d_table(data_dir, tmp_path):
    obs = read_unchecked(data_dir / S1D_TABLE)  # 35 A of it: read, but too little of the band to validate
    assert (obs.instrument, obs.kind, obs.object) == ("ESPRESSO", "table", "HD41248")
    assert (obs.medium, obs.medium_source) == ("air", "header")  # the wavelength_air column
    assert (obs.frame, obs.frame_source, obs.resolution) == ("barycentric", "format", 140000.0)
    assert obs.rv_kms == pytest.approx(3.38992224) and obs.berv_kms == pytest.approx(3.82695128)
    table = fits.getdata(data_dir / S1D_TABLE, 1)
    np.testing.assert_allclose(obs.wave, table["wavelength_air"])
    assert not obs.mask[table["quality"] != 0].any()
    result = preprocess(obs)
    assert Flag.RV_FROM_HEADER in result.flags and Flag.DEGRADED_RESOLUTION in result.flags
    assert abs(mgb_offset(result)) < REST_A
    with pytest.raises(ReadError, match="no coverage of 5050-5350 A"):
        read_observation(data_dir / S1D_TABLE)
    # without its air column the new-DRS 'wavelength' column is vacuum (the pipeline's convention)
    with fits.open(data_dir / S1D_TABLE) as h:
        cols = fits.ColDefs([c for c in h[1].columns if c.name != "wavelength_air"])
        fits.HDUList([h[0].copy(), fits.BinTableHDU.from_columns(cols)]).writeto(tmp_path / "vac.fits")
    vac = read_unchecked(tmp_path / "vac.fits")
    assert (vac.medium, vac.medium_source) == ("vacuum", "format")
    vres = preprocess(vac)
    assert Flag.VACUUM_CONVERTED in vres.flags and abs(mgb_offset(vres)) < REST_A


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("n_cols", [2, 3])
def test_plain_text(data_dir, tmp_path, n_cols, compress):
    wave, flux, _ = procyon(data_dir)
    err = np.full_like(flux, 0.01)
    body = np.column_stack([wave, flux, err][:n_cols])
    path = tmp_path / "procyon.txt"
    np.savetxt(path, body, header="wave flux err"[: 9 if n_cols == 2 else None], fmt="%.6f")
    if compress:
        path.write_bytes(gzip.compress(path.read_bytes()))
    obs = read_observation(path)
    assert (obs.kind, obs.instrument, obs.medium_source) == ("text", "unknown", "assumed")
    np.testing.assert_allclose(obs.flux[obs.mask], flux[obs.mask], atol=1e-6)
    if n_cols == 3:
        np.testing.assert_allclose(obs.variance, err**2)
    result = preprocess(obs)
    assert Flag.MEDIUM_ASSUMED in result.flags and abs(mgb_offset(result)) < REST_A


def test_echelle_image_with_wavelength_extension(data_dir, tmp_path):
    """HIRES/APF style: flux image + wavelength image + error image, no instrument cards; rows
    38-47 of the real HARPS e2ds with its blaze, one order written red to blue."""
    e2ds = read_observation(data_dir / E2DS)
    rows = slice(38, 48)
    flux, wave, err = e2ds.flux[rows].copy(), e2ds.wave[rows].copy(), np.sqrt(e2ds.variance[rows])
    flux[3], wave[3], err[3] = flux[3, ::-1], wave[3, ::-1], err[3, ::-1]
    path = write_image(tmp_path / "echelle.fits", flux.astype(np.float32), fits.Header(),
                       fits.ImageHDU(wave, name="WAVELENGTH"), fits.ImageHDU(err.astype(np.float32), name="ERROR"))
    obs = read_observation(path)
    assert (obs.kind, obs.instrument, obs.flux.shape) == ("echelle", "unknown", (10, 4096))
    assert any("descending wavelengths reversed" in n for n in obs.notes)
    np.testing.assert_allclose(obs.wave, e2ds.wave[rows])
    np.testing.assert_allclose(obs.variance[obs.mask], e2ds.variance[rows][obs.mask], rtol=1e-5)
    result = preprocess(obs)
    # observatory frame, but nothing says so: the measured RV is the star's minus the BERV
    assert result.rv_kms == pytest.approx(17.98 - 15.26, abs=0.5)
    assert abs(mgb_offset(result)) < REST_A


def test_1d_image_with_error_extension(data_dir, tmp_path):
    wave, flux, header = procyon(data_dir)
    sigma = np.full(flux.size, 0.02, dtype=np.float32)
    path = write_image(tmp_path / "with_sigma.fits", flux.astype(np.float32), header, fits.ImageHDU(sigma, name="SIGMA"))
    obs = read_observation(path)
    np.testing.assert_allclose(obs.variance[obs.mask], 0.02**2, rtol=1e-6)


# --- odd inputs: each read correctly with its note / flag, or refused with a clear reason ----------


def test_vacuum_wavelengths_converted(data_dir, tmp_path):
    wave, flux, _ = procyon(data_dir)
    labelled = read_observation(write_table(tmp_path / "vac.fits", {"wavelength_vac": air_to_vacuum(wave), "flux": flux}))
    assert (labelled.medium, labelled.medium_source) == ("vacuum", "header")
    result = preprocess(labelled)
    assert Flag.VACUUM_CONVERTED in result.flags and abs(mgb_offset(result)) < REST_A
    # unlabelled vacuum data: air is assumed and flagged; the ~84 km/s shift goes into the measured RV
    path = tmp_path / "vac.txt"
    np.savetxt(path, np.column_stack([air_to_vacuum(wave), flux]), fmt="%.6f")
    unlabelled = preprocess(read_observation(path))
    assert Flag.MEDIUM_ASSUMED in unlabelled.flags and unlabelled.rv_kms == pytest.approx(84.5, abs=2)
    assert abs(mgb_offset(unlabelled)) < REST_A
    # a comment saying so is enough for text
    path.write_text("# wavelengths in vacuum\n" + path.read_text())
    assert read_observation(path).medium == "vacuum"


def test_descending_wavelengths_reversed(data_dir, tmp_path):
    wave, flux, header = procyon(data_dir)
    up = read_observation(data_dir / PROCYON)
    path = tmp_path / "down.txt"
    np.savetxt(path, np.column_stack([wave, flux])[::-1], fmt="%.6f")
    down = read_observation(path)
    assert any("descending: reversed" in n for n in down.notes)
    np.testing.assert_allclose(down.wave, up.wave, atol=1e-6)
    h = header.copy()
    h["CRVAL1"], h["CDELT1"] = float(wave[-1]), -float(header["CDELT1"])
    image = read_observation(write_image(tmp_path / "down.fits", flux[::-1].astype(np.float32), h))
    np.testing.assert_allclose(image.wave, up.wave, atol=1e-6)
    np.testing.assert_array_equal(image.flux[image.mask], up.flux[up.mask])


def test_non_uniform_sampling_noted_and_resampled(data_dir, tmp_path):
    wave, flux, _ = procyon(data_dir)
    rng = np.random.default_rng(3)
    irregular = wave[0] + np.cumsum(rng.uniform(0.004, 0.016, size=int(wave.size * 0.95)))
    irregular = irregular[irregular < wave[-1]]
    obs = read_observation(write_table(tmp_path / "irregular.fits", {"WAVE": irregular, "FLUX": np.interp(irregular, wave, flux)}))
    assert any("non-uniform sampling" in n for n in obs.notes)
    assert abs(mgb_offset(preprocess(obs))) < REST_A


def test_flux_under_an_unusual_column_name(data_dir, tmp_path):
    wave, flux, _ = procyon(data_dir)
    one = read_observation(write_table(tmp_path / "one.fits", {"lambda": wave, "RELATIVE_INTENSITY": flux}))
    assert any("flux taken from column 'RELATIVE_INTENSITY'" in n for n in one.notes)
    with pytest.raises(ReadError, match="no flux column: columns are lambda, RELATIVE_INTENSITY, SKY_MODEL"):
        read_observation(write_table(tmp_path / "two.fits", {"lambda": wave, "RELATIVE_INTENSITY": flux, "SKY_MODEL": flux}))


def test_all_zero_stretch_masked(data_dir, tmp_path):
    wave, flux, header = procyon(data_dir)
    zeroed = np.where((wave > 5200) & (wave < 5210), 0.0, flux).astype(np.float32)
    obs = read_observation(write_image(tmp_path / "zeros.fits", zeroed, header))
    assert any("exactly zero flux masked (inside the band: 5200.0-5210.0 A)" in n for n in obs.notes)
    assert not obs.mask[(obs.wave > 5200.01) & (obs.wave < 5209.99)].any()
    result = preprocess(obs)
    assert Flag.GAP_MASKED in result.flags
    assert not result.mask[(result.wave > 5201) & (result.wave < 5209)].any()


def test_table_holding_two_spectra_refused(data_dir, tmp_path):
    wave, flux, _ = procyon(data_dir)
    rows = write_table(tmp_path / "rows.fits", {"WAVE": np.stack([wave, wave]), "FLUX": np.stack([flux, flux])}, one_row=True)
    with pytest.raises(ReadError, match="the table holds 2 spectra"):
        read_observation(rows)
    chained = write_table(tmp_path / "chained.fits", {"WAVE": np.concatenate([wave, wave]), "FLUX": np.concatenate([flux, flux])})
    with pytest.raises(ReadError, match="wavelengths jump back 1 time.*2 spectra"):
        read_observation(chained)
    t = fits.BinTableHDU.from_columns([fits.Column(name="WAVE", format="D", array=wave), fits.Column(name="FLUX", format="D", array=flux)])
    fits.HDUList([fits.PrimaryHDU(), t, t.copy()]).writeto(tmp_path / "two_tables.fits")
    with pytest.raises(ReadError, match="holds 2 spectrum tables"):
        read_observation(tmp_path / "two_tables.fits")


@pytest.mark.parametrize("kind", ["dc-flag", "wave-log", "loglam-column"])
def test_log_lambda_wcs(data_dir, tmp_path, kind):
    wave, flux, _ = procyon(data_dir)
    step = 0.01 / 5175 / np.log(10)  # log10 step of ~0.01 A
    logw = np.arange(np.log10(wave[0]), np.log10(wave[-1]), step)
    f = np.interp(10**logw, wave, flux)
    if kind == "dc-flag":
        path = write_image(tmp_path / "log.fits", f, wcs_header(CRVAL1=logw[0], CDELT1=step, CRPIX1=1, DC_FLAG=1))
        note = "log10-linear WCS"
    elif kind == "wave-log":  # FITS paper III: lambda = CRVAL1 exp(CDELT1 (p - CRPIX1) / CRVAL1)
        w0 = 10 ** logw[0]
        path = write_image(tmp_path / "log.fits", f, wcs_header(CTYPE1="AWAV-LOG", CRVAL1=w0, CDELT1=w0 * step * np.log(10), CRPIX1=1))
        note = "logarithmic WCS (AWAV-LOG)"
    else:
        path = write_table(tmp_path / "log.fits", {"loglam": logw, "flux": f})
        note = "holds log10(wavelength)"
    obs = read_observation(path)
    assert any(note in n for n in obs.notes), obs.notes
    np.testing.assert_allclose(obs.wave, 10**logw, rtol=1e-9)
    assert abs(mgb_offset(preprocess(obs))) < REST_A


def test_flux_without_wavelength_information(data_dir, tmp_path):
    _, flux, _ = procyon(data_dir)
    cases = {
        "image.fits": lambda p: write_image(p, flux.astype(np.float32), fits.Header()),
        "table.fits": lambda p: write_table(p, {"FLUX": flux}),
        "column.txt": lambda p: np.savetxt(p, flux[:, None], fmt="%.6f"),
        "echelle.fits": lambda p: write_image(p, np.stack([flux] * 4).astype(np.float32), fits.Header()),
    }
    reasons = {}
    for name, write in cases.items():
        write(tmp_path / name)
        with pytest.raises(ReadError) as info:
            read_observation(tmp_path / name)
        reasons[name] = info.value.reason
    assert all("missing wavelength solution" in r for r in reasons.values()), reasons
    assert "no wavelength column in the table (columns: FLUX" in reasons["table.fits"]
    assert "one column of flux" in reasons["column.txt"]


def test_low_resolution_refused(data_dir, tmp_path):
    wave, flux, header = procyon(data_dir)
    h = header.copy()
    h["SPEC_RES"] = 15000.0
    with pytest.raises(ReadError, match=r"resolution R = 15,000 \(header\) is below the 20,000"):
        read_observation(write_image(tmp_path / "low.fits", flux.astype(np.float32), h))
    with pytest.raises(ReadError, match=r"R = 12,000 \(user\)"):
        read_observation(data_dir / PROCYON, resolution=12000)
    coarse = np.arange(wave[0], wave[-1], 0.2)  # 0.2 A pixels carry at most R ~ 13,000
    path = tmp_path / "coarse.txt"
    np.savetxt(path, np.column_stack([coarse, np.interp(coarse, wave, flux)]), fmt="%.5f")
    with pytest.raises(ReadError, match=r"\(assumed\) is below"):
        read_observation(path)


def test_text_that_is_not_a_spectrum(tmp_path):
    path = tmp_path / "coefficients.txt"
    np.savetxt(path, np.random.default_rng(0).normal(size=(69, 5)), header="order c0 c1 c2 c3")
    with pytest.raises(ReadError, match="5 columns"):
        read_observation(path)


def test_read_stage_takes_the_resolution_override(data_dir):
    """What `estimate --resolution R` does: the read stage passes R to the reader and on to the fit."""
    uri = str(data_dir / SCO)
    assumed = read_one(uri, ReadOptions(retries=1))
    given = read_one(uri, ReadOptions(retries=1, resolution=32000.0))
    assert assumed["status"] == given["status"] == "ok"
    assert assumed["flags"] & Flag.RESOLUTION_ASSUMED and not given["flags"] & Flag.RESOLUTION_ASSUMED
    assert given["flags"] & Flag.PARTIAL_COVERAGE and given["resolution"] == 32000.0
    assert given["instrument"] == "unknown"
    low = read_one(uri, ReadOptions(retries=1, resolution=10000.0))
    assert low["status"] == "error" and "below the 20,000" in low["error"]


def test_inspect_says_what_was_assumed(data_dir, capsys):
    from survey_estimator.cli import run_command

    assert run_command("inspect", [str(data_dir / SCO)]) == 0
    out = capsys.readouterr().out
    assert "R = 25,100 (assumed)" in out and "medium        air (assumed)" in out
    assert "assumed       instrument, resolution, medium, frame" in out and "coverage 53%" in out
    assert "PARTIAL_COVERAGE" in out and "Mg b offset" in out
    assert run_command("inspect", ["--json", "--resolution", "32000", str(data_dir / SCO)]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["resolution"], s["resolution_source"]) == (32000.0, "user")
    assert abs(float(np.median(s["mgb_offsets_A"]))) < REST_A
    assert run_command("inspect", ["--resolution", "15000", str(data_dir / SCO)]) == 2
    assert "below the 20,000" in capsys.readouterr().err


def test_validate_messages_follow_the_coverage_that_fails():
    """The wavelengths' coverage is only computed when the usable pixels' fails: each failing
    case keeps its own message, and a passing file's coverage is that of its usable pixels."""
    from dataclasses import replace as dc_replace

    from survey_estimator.observation import Observation, band_coverage, validate

    wave = np.linspace(5000.0, 5400.0, 8000)
    flux = np.ones_like(wave)
    obs = Observation(flux=flux, variance=flux.copy(), wave=wave, mask=np.ones(wave.size, bool), medium="air",
                      frame="observatory", instrument="HARPS-N", drs_version="", kind="s1d", source="t.fits",
                      resolution=115000.0)
    ok = validate(dc_replace(obs, mask=wave < 5300.0))
    assert ok.coverage == pytest.approx(band_coverage(wave, wave < 5300.0)) and 0.5 < ok.coverage < 1
    with pytest.raises(ReadError, match="fewer than 50% of 5050-5350 A"):
        validate(dc_replace(obs, mask=wave < 5150.0))
    with pytest.raises(ReadError, match="all-NaN"):
        validate(dc_replace(obs, mask=(wave < 5040.0) | (wave > 5360.0)))
    with pytest.raises(ReadError, match="no coverage of 5050-5350 A"):
        validate(dc_replace(obs, wave=wave - 300.0))
