"""Readers on real archive files (tests/data, see ORIGIN.md) and on a HARPS-N old-DRS e2ds written
here with real HARPS-N cards and the real HARPS-N wavelength solution."""
from __future__ import annotations

import gzip
import io
import pickle
import shutil
import warnings

import numpy as np
import pytest
from astropy.io import fits

from survey_estimator.instruments import read_observation
from survey_estimator.layout import C_KMS, doppler_factor, harpn_reference_coefficients, wavelength_solution
from survey_estimator.observation import ReadError
from survey_estimator.preprocess import Flag, preprocess
from survey_estimator.rv import TEMPLATE_LINES

E2DS = "HARPS.2003-12-13T06-19-48.371_e2ds_A.fits"
BLAZE = "HARPS.2003-12-12T21-42-45.093_blaze_A.fits"
S1D = "HARPS.2010-09-18T23-42-36.178_s1d_A.4900-5500.fits"
S2D = "HD41248_1_1_S2D_A.rows80-95.fits.gz"
ADP = "ADP.2014-09-16T11-04-45.123.4900-5500.fits"
CCF = "r.HARPN.2015-08-03T14-17-24.899_CCF_A.fits"


def test_harps_e2ds_with_blaze_found_next_to_it(data_dir):
    obs = read_observation(data_dir / E2DS)
    assert (obs.instrument, obs.kind, obs.object, obs.drs_version) == ("HARPS", "e2ds", "Gl273", "HARPS_3.5")
    assert obs.flux.shape == obs.wave.shape == (72, 4096)
    assert (obs.frame, obs.medium) == ("observatory", "air")
    assert obs.berv_kms == pytest.approx(15.2576897, abs=1e-6)
    assert obs.bjd == pytest.approx(2452986.76962528)
    assert obs.rv_kms is None  # old-DRS e2ds carries no stellar RV
    assert obs.ra_deg == pytest.approx(111.852458) and obs.dec_deg == pytest.approx(5.22063)
    assert obs.blaze_corrected and any(BLAZE in n for n in obs.notes)
    assert obs.snr.shape == (72,) and obs.snr[45] > 10
    # 0-based polynomial: row 0 starts at the first coefficient
    h = fits.getheader(data_dir / E2DS)
    assert obs.wave[0, 0] == pytest.approx(h["HIERARCH ESO DRS CAL TH COEFF LL0"])
    assert np.all(np.diff(obs.wave, axis=1) > 0)
    # rows 40-45 cover 5028-5304 A (FACTS), then the CCD gap to row 46
    assert obs.wave[40, 0] < 5050 and obs.wave[45, -1] == pytest.approx(5304, abs=3)
    assert obs.wave[46, 0] > 5330


def test_harps_e2ds_blaze_division_and_variance(data_dir):
    with_blaze = read_observation(data_dir / E2DS)
    raw = fits.getdata(data_dir / E2DS).astype(float)
    blaze = fits.getdata(data_dir / BLAZE).astype(float)
    row = 42
    ok = blaze[row] > 0.1
    np.testing.assert_allclose(with_blaze.flux[row][ok], raw[row][ok] / blaze[row][ok], rtol=1e-6)
    # photon + readout variance: var = f/conad + (sigdet/conad)^2, divided by blaze^2
    conad, sigdet = 1.42, 5.44586804709925
    expect = (np.maximum(raw[row], 0) / conad + (sigdet / conad) ** 2) / blaze[row] ** 2
    np.testing.assert_allclose(with_blaze.variance[row][ok], expect[ok], rtol=1e-6)


@pytest.mark.parametrize("name", [E2DS, S2D])
def test_band_only_reads_the_rows_preprocessing_uses_and_changes_nothing_it_gives(data_dir, name):
    full = read_observation(data_dir / name)
    band = read_observation(data_dir / name, band_only=True)
    rows = np.asarray(band.orders)
    near = [i for i in range(full.flux.shape[0])
            if np.any((full.wave[i] > 5026.0 - 10) & (full.wave[i] < 5395.0 + 10))]
    assert list(rows) == [int(full.orders[i]) for i in near]
    assert len(rows) < full.flux.shape[0] or name == S2D  # the S2D file here holds only its band rows
    for a in ("flux", "variance", "wave", "mask"):
        np.testing.assert_array_equal(getattr(band, a), getattr(full, a)[near])
    assert band.coverage == full.coverage and band.snr is not None
    a, b = preprocess(full), preprocess(band)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.flags == b.flags and a.orders_used == b.orders_used and a.rv_kms == b.rv_kms


def test_band_only_keeps_every_row_of_a_spectrum_outside_the_band(tmp_path, data_dir):
    path = tmp_path / E2DS
    with fits.open(data_dir / E2DS) as hdul:  # move the solution 1500 A to the red
        for k in range(72 * 4):
            key = f"HIERARCH ESO DRS CAL TH COEFF LL{k}"
            if k % 4 == 0:
                hdul[0].header[key] = hdul[0].header[key] + 1500.0
        hdul.writeto(path)
    with pytest.raises(ReadError, match="no coverage of 5050-5350 A"):
        read_observation(path, band_only=True)


def test_e2ds_from_bytes_has_no_blaze_unless_given(data_dir):
    raw = (data_dir / E2DS).read_bytes()
    obs = read_observation((E2DS, raw))
    assert not obs.blaze_corrected and obs.source == E2DS
    assert any("not available for in-memory input" in n for n in obs.notes)
    given = read_observation((E2DS, io.BytesIO(raw)), blaze=(BLAZE, (data_dir / BLAZE).read_bytes()))
    assert given.blaze_corrected
    np.testing.assert_allclose(given.flux, read_observation(data_dir / E2DS).flux, equal_nan=True)


def test_e2ds_blaze_missing_on_disk(tmp_path, data_dir):
    shutil.copy(data_dir / E2DS, tmp_path / E2DS)
    obs = read_observation(tmp_path / E2DS)
    assert not obs.blaze_corrected
    assert any("not found" in n for n in obs.notes)


def test_gzip_detected_by_content_not_name(tmp_path, data_dir):
    plain = read_observation(data_dir / E2DS)
    odd = tmp_path / "spectrum.dat"  # gzip content, misleading name
    odd.write_bytes(gzip.compress((data_dir / E2DS).read_bytes()))
    zipped = read_observation(odd, blaze=data_dir / BLAZE)
    np.testing.assert_array_equal(zipped.flux, plain.flux)
    np.testing.assert_array_equal(zipped.wave, plain.wave)


def test_harps_s1d(data_dir):
    obs = read_observation(data_dir / S1D)
    assert (obs.instrument, obs.kind, obs.object) == ("HARPS", "s1d", "Gl581")
    assert obs.flux.ndim == 1 and obs.frame == "barycentric" and obs.medium == "air"
    assert obs.wave[0] == pytest.approx(4900.0, abs=0.01)
    assert np.diff(obs.wave) == pytest.approx(0.01)
    assert obs.berv_kms == pytest.approx(-23.5438772)
    assert np.isfinite(obs.variance[obs.mask]).all() and (obs.variance[obs.mask] > 0).all()


def test_espresso_s2d_cut_down(data_dir):
    obs = read_observation(data_dir / S2D)
    assert (obs.instrument, obs.kind, obs.object) == ("ESPRESSO", "s2d", "HD41248")
    assert obs.flux.shape == (16, 9141)
    assert (obs.frame, obs.medium) == ("barycentric", "air")
    assert obs.rv_kms == pytest.approx(3.38992224) and obs.berv_kms == pytest.approx(3.82695128)
    assert obs.resolution == 140000.0 and obs.drs_version == "espdr/1.0.9a2"
    # QUALDATA != 0 is masked; the error array squared is the variance
    with fits.open(data_dir / S2D) as h:
        qual = h["QUALDATA"].data
        err = h["ERRDATA"].data.astype(float)
    assert not obs.mask[qual != 0].any()
    np.testing.assert_allclose(obs.variance, err**2)
    assert obs.snr is not None and obs.snr[0] == pytest.approx(28.99, abs=0.01)  # QC ORDER1 SNR -> index 0


def test_s2d_extensions_found_by_name_and_vacuum_only(tmp_path, data_dir):
    with fits.open(data_dir / S2D) as h:
        hdus = [h[0].copy()] + [e.copy() for e in reversed(h[1:]) if e.name != "WAVEDATA_AIR_BARY"]
        fits.HDUList(hdus).writeto(tmp_path / "vac.fits")
    obs = read_observation(tmp_path / "vac.fits")
    assert obs.medium == "vacuum"
    air = read_observation(data_dir / S2D)
    assert np.nanmedian(obs.wave - air.wave) == pytest.approx(1.45, abs=0.05)  # vacuum is ~1.45 A redder at 5200 A
    result = preprocess(obs)
    assert Flag.VACUUM_CONVERTED in result.flags


def test_adp_table(data_dir):
    obs = read_observation(data_dir / ADP)
    assert (obs.instrument, obs.kind, obs.object) == ("HARPS", "table", "IC4651No9122")
    assert (obs.resolution, obs.resolution_source) == (115000.0, "header")  # SPEC_RES
    assert obs.frame == "barycentric"  # SPECSYS = 'BARYCENT'
    assert obs.wave[0] == pytest.approx(4900.0, abs=0.011)
    # ERR is all NaN in this product: the variance is estimated instead
    assert np.isfinite(obs.variance[obs.mask]).all()
    assert obs.snr[0] == pytest.approx(23.35)


def test_bytes_and_path_read_the_same(data_dir):
    a = read_observation(data_dir / S1D)
    b = read_observation(("s3://bucket/night/" + S1D, (data_dir / S1D).read_bytes()))
    np.testing.assert_array_equal(a.flux, b.flux)
    assert b.source == "s3://bucket/night/" + S1D


def test_read_error_is_one_picklable_value_error(data_dir):
    with pytest.raises(ReadError) as info:
        read_observation(data_dir / CCF)
    err = info.value
    assert isinstance(err, ValueError) and CCF in str(err) and "CCF_A" in err.reason
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.path == err.path


# --- HARPS-N old-DRS e2ds written here -------------------------------------------------------


def harpn_header(data_dir) -> fits.Header:
    """Primary header with the real HARPS-N cards of the solar-telescope CCF product."""
    src = fits.getheader(data_dir / CCF)
    h = fits.Header()
    for key in ("TELESCOP", "INSTRUME", "OBS-TYPE", "RA-DEG", "DEC-DEG", "RA", "DEC", "MJD-OBS", "DATE-OBS", "EXPTIME"):
        h[key] = src[key]
    for key in ("TNG OBS TARG NAME", "TNG DPR CATG", "TNG DPR TYPE", "TNG DPR TECH"):
        h["HIERARCH " + key] = src[key]
    return h


def write_harpn_e2ds(path, data_dir, rv_kms: float, berv_kms: float, rv_card: bool = False, seed: int = 1):
    """A 69 x 4096 HARPS-N e2ds: template lines at rv, observatory frame, blaze, Poisson noise."""
    coeffs, degree = harpn_reference_coefficients()
    wave = wavelength_solution(coeffs, degree)
    rest = wave * float(doppler_factor(berv_kms)) / float(doppler_factor(rv_kms))
    spec = np.ones_like(wave)
    for lam, depth in TEMPLATE_LINES:
        sigma = lam / 115000 / 2.3548
        near = np.abs(rest - lam) < 10 * sigma
        spec[near] -= depth * np.exp(-0.5 * ((rest[near] - lam) / sigma) ** 2)
    x = np.linspace(-1, 1, wave.shape[1])
    blaze = np.sinc(0.5 * x) ** 2  # ~0.4 at the order ends, like the real HARPS-N blaze
    rng = np.random.default_rng(seed)
    counts = rng.poisson(np.clip(20000 * blaze * spec, 0, None)).astype(np.float32)
    h = harpn_header(data_dir)
    h["HIERARCH TNG DRS VERSION"] = "HARPN_3.7"
    h["HIERARCH TNG DRS CAL LOC NBO"] = wave.shape[0]
    h["HIERARCH TNG DRS CAL TH DEG LL"] = degree
    for i, c in enumerate(coeffs):
        h[f"HIERARCH TNG DRS CAL TH COEFF LL{i}"] = float(c)
    h["HIERARCH TNG DRS BERV"] = berv_kms
    h["HIERARCH TNG DRS BJD"] = 2457238.09
    h["HIERARCH TNG DRS CCD CONAD"] = 1.1
    h["HIERARCH TNG DRS CCD SIGDET"] = 3.5
    h["HIERARCH TNG DRS BLAZE FILE"] = "HARPN.2015-08-02T20:00:00.000_blaze_A.fits"
    for n in range(wave.shape[0]):
        h[f"HIERARCH TNG DRS SPE EXT SN{n}"] = 140.0
    if rv_card:
        h["HIERARCH TNG DRS CCF RVC"] = rv_kms
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits.PrimaryHDU(data=counts, header=h).writeto(path)
    return path


MGB = (5167.32, 5172.68, 5183.60)


def line_minimum(wave, flux, mask, lam, half=0.05):
    """Line centre from a parabola through the pixels within ``half`` A of the flux minimum."""
    out = []
    for r in range(wave.shape[0]):
        sel = np.abs(wave[r] - lam) < 0.15
        if sel.sum() < 5 or not mask[r][sel].all():
            continue
        j = np.flatnonzero(sel)[np.argmin(flux[r][sel])]
        fit = np.abs(wave[r] - wave[r, j]) <= half
        a, b, _ = np.polyfit(wave[r][fit] - wave[r, j], flux[r][fit], 2)
        out.append(wave[r, j] - b / (2 * a))
    return out


def test_harpn_e2ds_reads_with_harpn_quirks(tmp_path, data_dir):
    path = write_harpn_e2ds(tmp_path / "HARPN.2015-08-03T14-17-24.899_e2ds_A.fits", data_dir, rv_kms=-25.0, berv_kms=10.0)
    obs = read_observation(path)
    assert (obs.instrument, obs.kind, obs.drs_version) == ("HARPS-N", "e2ds", "HARPN_3.7")
    assert obs.object == "Sun"  # from TNG OBS TARG NAME: HARPS-N has no OBJECT card
    assert obs.ra_deg == pytest.approx(133.181529)  # RA-DEG, not RA (hours)
    assert obs.flux.shape == (69, 4096) and not obs.blaze_corrected
    np.testing.assert_allclose(obs.wave, wavelength_solution(*harpn_reference_coefficients()))


@pytest.mark.parametrize("rv_card", [False, True])
def test_harpn_e2ds_frame_and_rv(tmp_path, data_dir, rv_card):
    rv, berv = -25.0, 10.0
    path = write_harpn_e2ds(tmp_path / "e2ds.fits", data_dir, rv_kms=rv, berv_kms=berv, rv_card=rv_card)
    result = preprocess(read_observation(path))
    assert Flag.BERV_APPLIED in result.flags and Flag.BLAZE_MISSING in result.flags
    assert result.berv_kms == berv
    if rv_card:
        assert Flag.RV_FROM_HEADER in result.flags and result.rv_kms == rv and result.rv_source == "header"
    else:
        assert Flag.RV_MEASURED in result.flags and result.rv_source == "measured"
        assert result.rv_kms == pytest.approx(rv, abs=0.1)
    for lam in MGB:
        centres = line_minimum(result.wave, result.flux, result.mask, lam)
        assert centres and max(abs(c - lam) for c in centres) < 0.005
    # native HARPS-N rows 36-43 are the canonical orders: nothing masked but the edges
    assert result.masked_fraction < 0.02
    assert Flag.GAP_MASKED not in result.flags


def test_e2ds_blaze_found_in_previous_night_folder_only(tmp_path, data_dir):
    """The DRS may name a blaze from the previous night's calibration: the reader looks one night
    folder away (YYYY-MM-DD), and nowhere else."""
    night, previous, unrelated = tmp_path / "2003-12-12", tmp_path / "2003-12-11", tmp_path / "other"
    for d in (night, previous, unrelated):
        d.mkdir()
    shutil.copy(data_dir / E2DS, night / E2DS)
    shutil.copy(data_dir / BLAZE, unrelated / BLAZE)
    assert not read_observation(night / E2DS).blaze_corrected
    shutil.copy(data_dir / BLAZE, previous / BLAZE)
    assert read_observation(night / E2DS).blaze_corrected


# -- the instrument records (issue 10, point 3) ----------------------------------------------------
HD122563 = "hd122563.5095-5255.fits"


def test_each_spectrograph_is_one_record_used_everywhere(tmp_path, data_dir, monkeypatch):
    """A new record is all it takes: detection, card prefix, resolving power, observatory (night)
    and the file-name guess all follow it (a real 1D file given an INSTRUME card)."""
    import dataclasses
    import datetime as dt

    from survey_estimator.catalogue.schema import night_from_key, night_of
    from survey_estimator.instruments import registry

    path = tmp_path / "FIES.2020-03-01T01-00-00.000.fits"
    with fits.open(data_dir / HD122563) as hdul:
        hdul[0].header["INSTRUME"] = "FIES"
        hdul[0].header["HIERARCH NOT INS MODE"] = "MED"
        hdul.writeto(path)
    before = read_observation(path)
    assert (before.instrument, before.resolution_source) == ("FIES", "assumed")  # no record: read generically
    fies = registry.Instrument("FIES", prefix="NOT", file_tag="FIES", site="NOT, La Palma", lon_deg=-17.885, lat_deg=28.757,
                               resolution=67000.0, modes={"MED": 46000.0}, mode_card="INS MODE")
    monkeypatch.setattr(registry, "INSTRUMENTS", registry.INSTRUMENTS + (fies,))
    obs = read_observation(path)
    assert (obs.instrument, obs.instrument_source, obs.resolution, obs.resolution_source) == ("FIES", "header", 46000.0, "instrument")
    assert preprocess(obs).resolution == 46000.0 and Flag.RESOLUTION_ASSUMED not in preprocess(obs).flags
    assert registry.lookup("fies") is fies and fies.location.lon.deg == pytest.approx(-17.885)
    assert night_of(dt.datetime(2020, 3, 1, 12, 30), "FIES") == "2020-02-29"  # 11:18 local time at La Palma
    assert night_of(dt.datetime(2020, 3, 1, 12, 30), "unknown") == "2020-03-01"  # UTC noon
    assert night_from_key(path.name) == "2020-02-29"
    monkeypatch.setattr(registry, "INSTRUMENTS", tuple(dataclasses.replace(r, lon_deg=0.0) if r.name == "HARPS" else r
                                                       for r in registry.INSTRUMENTS))
    assert night_of(dt.datetime(2003, 12, 13, 6, 19), "HARPS") == "2003-12-12"
    assert night_of(dt.datetime(2003, 12, 13, 16, 0), "HARPS") == "2003-12-13"  # La Silla would say 12-12


def test_records_hold_what_the_readers_and_preprocessing_use(data_dir):
    from survey_estimator.instruments.registry import UNKNOWN, lookup

    assert lookup("HARPN") is lookup("harps_n") is lookup("HARPS-N")
    assert lookup("HARPS-N").layout == "canonical" and lookup("HARPS").layout == "resampled"
    assert lookup("UVES") is UNKNOWN and UNKNOWN.resolving_power() == (None, "assumed")
    assert lookup("MIKE-Blue").resolving_power() == (28000.0, "assumed")  # no slit card
    assert read_observation(data_dir / "hd140283.5095-5255.fits").resolution == 28000.0  # SLITSIZE = 1.0
    s2d = read_observation(data_dir / S2D)
    assert (s2d.instrument, s2d.resolution, s2d.resolution_source) == ("ESPRESSO", 140000.0, "instrument")  # INS MODE SINGLEHR


def test_one_blaze_lookup_for_local_files_and_archive_listings(tmp_path, data_dir):
    """find_blaze is the one lookup: beside the file or one night folder away (inspect and
    estimate), or in an archive's blaze index (the catalogue); all give the same file."""
    from survey_estimator.catalogue.inventory import list_archive
    from survey_estimator.instruments.blaze import blaze_key, find_blaze, local_blaze_index

    night, previous = tmp_path / "2003-12-13", tmp_path / "2003-12-12"
    night.mkdir(), previous.mkdir()
    shutil.copy(data_dir / E2DS, night / E2DS)
    header = fits.getheader(night / E2DS)
    assert find_blaze(night / E2DS, header) is None
    shutil.copy(data_dir / BLAZE, previous / BLAZE)
    local = find_blaze(night / E2DS, header)
    assert local == str(previous / BLAZE)
    assert find_blaze(E2DS, header, local_blaze_index([night / E2DS])) == local
    assert find_blaze(E2DS, header, list_archive(str(tmp_path)).blaze) == local
    assert blaze_key("HARPS.2003-12-12T21:42:45.093_blaze_A.fits.gz") == BLAZE
    assert find_blaze(E2DS, fits.getheader(data_dir / S1D), {BLAZE: local}) is None  # no blaze card in s1d products


def test_training_spectra_need_no_fits_stack():
    """The sampler, the training loop and the bundle import without astropy (a lent GPU machine
    has none); the readers come on first use of ``read_observation``."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['astropy'] = None\n"
            "import survey_estimator.sampling, survey_estimator.training.loop, survey_estimator.models.bundle\n"
            "import survey_estimator.synth.packed, survey_estimator.instruments as ins\n"
            "assert ins.lookup('HARPN').name\n"
            "try:\n    ins.read_observation\nexcept ImportError:\n    print('readers need astropy')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "readers need astropy"
