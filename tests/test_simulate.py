"""The `simulate` contract: HARPS-N old-DRS e2ds + blaze files read back with astropy."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from survey_estimator.cli import run_command
from survey_estimator.e2ds_writer import SIGDET, E2dsSimulator, Exposure, write_e2ds
from survey_estimator.layout import canonical_wave, doppler_factor, wavelength_solution
from survey_estimator.normalise import normalise_numpy
from survey_estimator.synth.store import GridStore

P = "HIERARCH TNG "
NODE = (5500.0, 4.5, -0.5)  # a node of the tiny grid


@pytest.fixture(scope="module")
def simulator(tiny_grid) -> E2dsSimulator:
    return E2dsSimulator(tiny_grid)


def _wave_from_cards(h) -> np.ndarray:
    deg = h[P + "DRS CAL TH DEG LL"]
    n = h[P + "DRS CAL LOC NBO"]
    coeffs = np.array([h[f"{P}DRS CAL TH COEFF LL{i}"] for i in range(n * (deg + 1))])
    return wavelength_solution(coeffs, deg)


def test_cli_writes_a_faithful_e2ds(tiny_grid, tmp_path):
    rc = run_command("simulate", ["--teff", "5600", "--logg", "4.4", "--mh", "-0.2", "--vsini", "6", "--snr", "80",
                                  "--rv", "-12.5", "--berv", "7.25", "--seed", "4", "--date-obs", "2016-01-08T02:30:21.236",
                                  "--object", "HD 1234", "--grid", tiny_grid, "--out", str(tmp_path)])
    assert rc == 0
    e2ds = tmp_path / "HARPN.2016-01-08T02-30-21.236_e2ds_A.fits"
    with fits.open(e2ds) as hdul:
        hdul.verify("exception")
        assert len(hdul) == 1
        data, h = hdul[0].data, hdul[0].header
    assert data.shape == (69, 4096) and data.dtype == np.dtype(">f4")
    assert h["TELESCOP"] == "TNG" and h["INSTRUME"] == "HARPN" and h["OBS-TYPE"] == "SCIENCE"
    assert h[P + "OBS TARG NAME"] == "HD 1234" and "OBJECT" not in h
    assert h["DATE-OBS"] == "2016-01-08T02:30:21.236"
    assert abs(h["MJD-OBS"] - 57395.10441245) < 1e-6
    assert h[P + "DRS VERSION"] == "HARPN_3.7" and h[P + "DRS CAL LOC NBO"] == 69
    assert h[P + "DRS BERV"] == 7.25
    assert abs(h[P + "DRS BJD"] - (h["MJD-OBS"] + 2400000.5 + h["EXPTIME"] / 172800)) < 1e-8
    assert abs(h["RA"] * 15 - h["RA-DEG"]) < 1e-9 and abs(h["DEC"] * 15 - h["DEC-DEG"]) < 1e-9
    for key in ("DRS CCD SIGDET", "DRS CCD CONAD", "DRS CAL TH FILE"):
        assert P + key in h
    # wavelength solution from the cards = the canonical layout; Mg b2 lands in row 39
    wave = _wave_from_cards(h)
    assert wave.shape == (69, 4096)
    np.testing.assert_allclose(wave[36:44], canonical_wave(), rtol=0, atol=1e-9)  # card precision
    rows = [r for r in range(69) if wave[r, 0] <= 5183.60 <= wave[r, -1]]
    assert rows == [39]
    # per-order S/N cards, n from 0, median over rows 36-43 = the requested S/N
    sn = np.array([h[f"{P}DRS SPE EXT SN{n}"] for n in range(69)])
    assert abs(np.median(sn[36:44]) - 80) < 3
    assert sn[0] < sn[40]  # blue orders have less throughput
    # the blaze file named by the card: same shape, ~1 at peak
    blaze_path = tmp_path / h[P + "DRS BLAZE FILE"]
    assert blaze_path.name == "HARPN.2016-01-08T02-30-21.236_blaze_A.fits"
    blaze = fits.getdata(blaze_path)
    assert blaze.shape == (69, 4096) and abs(float(blaze.max(axis=1).min()) - 1) < 1e-3
    assert float(blaze[:, 0].max()) < 0.8  # real blaze falls off at the order edges
    assert (data[36:44] > 0).mean() > 0.99
    # truth cards for the catalogue tests
    assert (h["HIERARCH SIM TEFF"], h["HIERARCH SIM VSINI"], h["HIERARCH SIM RV"]) == (5600.0, 6.0, -12.5)


def keys_interp(x, xp, fp):
    """Independent reference: Keys' (1981) piecewise cubic kernel (a = -1/2) on the fine-grid
    index, written from the paper's kernel rather than the project's weight polynomials."""
    u = np.interp(x, xp, np.arange(xp.size))
    i0 = np.floor(u).astype(int)
    out = np.zeros_like(u)
    for k in range(-1, 3):
        s = np.abs(u - (i0 + k))
        w = np.where(s <= 1, 1.5 * s**3 - 2.5 * s**2 + 1, -0.5 * s**3 + 2.5 * s**2 - 4 * s + 2)
        out += w * fp[i0 + k]
    return out


def test_noiseless_unblazed_rows_are_the_normalised_spectrum_times_a_constant(tiny_grid, tmp_path):
    rv, berv = 90.0, -5.0  # beyond the table's margin: the exact fine-grid path, checked against numpy
    out = tmp_path / "a_e2ds_A.fits"
    rc = run_command("simulate", ["--teff", str(NODE[0]), "--logg", str(NODE[1]), "--mh", str(NODE[2]), "--vsini", "0",
                                  "--noiseless", "--no-blaze", "--rv", str(rv), "--berv", str(berv), "--grid", tiny_grid,
                                  "--out", str(out)])
    assert rc == 0
    data = fits.getdata(out).astype(np.float64)
    assert fits.getheader(out)[P + "DRS BLAZE FILE"] == "a_blaze_A.fits"
    assert np.all(fits.getdata(tmp_path / "a_blaze_A.fits") == 1.0)
    # independent reference: the node spectrum (v sin i = 0) shifted by hand with numpy
    store = GridStore(tiny_grid)
    dense = store.load_dense()
    i = tuple(int(np.argmin(np.abs(a - v))) for a, v in zip(dense.axes, NODE))
    lam_obs = canonical_wave()
    lam_rest = lam_obs * doppler_factor(berv) / doppler_factor(rv)
    # the forward model's macroturbulence (a radial-tangential kernel, its width from Teff / log g)
    from survey_estimator.layout import C_KMS
    from survey_estimator.sampling.macroturbulence import rt_kernel, vmac_relation

    kernel = rt_kernel(float(vmac_relation(NODE[0], NODE[1])), C_KMS * float(np.mean(np.diff(np.log(dense.wave))))).numpy()
    K = len(kernel) // 2
    node = np.pad(dense.flux[i].astype(np.float64), K, mode="edge")
    ref = keys_interp(lam_rest, dense.wave, np.convolve(node, kernel[::-1], mode="valid"))
    ratio = data[36:44] / ref
    assert np.std(ratio) / np.mean(ratio) < 1e-5  # one constant for all 8 rows
    assert np.allclose(data[:36], np.mean(ratio), rtol=1e-6)  # other rows: continuum only
    # the sign convention: the same spectrum without the shift does NOT match
    unshifted = keys_interp(lam_obs, dense.wave, np.convolve(node, kernel[::-1], mode="valid"))
    assert np.std(data[36:44] / unshifted) / np.mean(ratio) > 1e-3
    # and the shared normalisation of the rows gives the continuum-normalised spectrum back
    norm, _ = normalise_numpy(data[36:44], np.ones((8, 4096), bool))
    ref_norm, _ = normalise_numpy(ref, np.ones((8, 4096), bool))
    np.testing.assert_allclose(norm, ref_norm, atol=1e-5)


def test_photon_noise_matches_the_header_model(simulator, tmp_path):
    e = Exposure(*NODE, 10.0, snr=60.0, rv=3.0, seed=9)
    noisy = fits.getdata(simulator.write(tmp_path / "n_e2ds_A.fits", e).e2ds).astype(np.float64)
    expected, cont, _ = simulator.expected_counts(e, simulator.spectra([e])[0])
    # the noise is what a reader assumes from the header: variance = counts + SIGDET^2
    z = (noisy - expected) / np.sqrt(expected + SIGDET**2)
    assert abs(float(z.std()) - 1) < 0.01 and abs(float(z.mean())) < 0.01
    # median continuum S/N per pixel over rows 36-43 is the requested one
    snr = cont[36:44] / np.sqrt(cont[36:44] + SIGDET**2)
    assert abs(float(np.median(snr)) - 60.0) < 1e-6
    # measured from the data: continuum pixels of row 40, scatter about the expectation
    row = noisy[40] - expected[40]
    measured = np.median(cont[40]) / row.std()
    assert abs(measured / (np.median(cont[40]) / np.sqrt(np.median(expected[40]) + SIGDET**2)) - 1) < 0.05
    assert int((noisy < 0).sum()) == 0  # S/N 60: no negative counts in the spectrum rows


def test_write_e2ds_builds_a_mock_archive(tiny_grid, tmp_path):
    dates = [f"2016-01-0{d}T0{h}:00:00.000" for d in (8, 9) for h in (1, 2)]
    paths = [write_e2ds(tmp_path / "arch", (5300 + 100 * i, 4.3, -0.4, 3.0 * i), grid=tiny_grid, snr=50, date_obs=d,
                        object_name=f"STAR{i}", seed=i) for i, d in enumerate(dates)]
    names = sorted(p.e2ds.name for p in paths)
    assert names == sorted(f"HARPN.{d.replace(':', '-')}_e2ds_A.fits" for d in dates)
    heads = [fits.getheader(p.e2ds) for p in paths]
    assert [h["HIERARCH SIM TEFF"] for h in heads] == [5300.0, 5400.0, 5500.0, 5600.0]
    assert len({h["MJD-OBS"] for h in heads}) == 4
    # a shared blaze file for a batch, written once
    sim = E2dsSimulator(tiny_grid)
    many = sim.write_many(tmp_path / "shared", [Exposure(5500, 4.5, -0.2, 2.0, date_obs=d, seed=1) for d in dates],
                          blaze_name="HARPN.2016-01-07T16-00-00.000_blaze_A.fits")
    assert len({m.blaze for m in many}) == 1 and len(list((tmp_path / "shared").glob("*_blaze_A.fits"))) == 1


def test_simulate_rejects_labels_outside_the_grid(tiny_grid, tmp_path):
    rc = run_command("simulate", ["--teff", "7000", "--logg", "4.4", "--mh", "0", "--vsini", "0", "--grid", tiny_grid,
                                  "--out", str(tmp_path / "x_e2ds_A.fits")])
    assert rc == 2 and not (tmp_path / "x_e2ds_A.fits").exists()
