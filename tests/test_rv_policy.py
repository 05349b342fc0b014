"""RV policy of preprocessing: a measured RV is applied only when the CCF measurement is reliable.

An unreliable measurement (weak peak: featureless data, or the analytic test grid's lines, which
are not the template's real lines) used to shift the spectrum by tens to hundreds of km/s. Now it
is kept for inspection (``rv_measurement``, flag RV_UNRELIABLE) but no stellar shift is made.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from survey_estimator.catalogue.read import ReadOptions, read_one
from survey_estimator.layout import doppler_factor
from survey_estimator.observation import Observation
from survey_estimator.preprocess import Flag, PreprocessConfig, preprocess
from survey_estimator.rv import TEMPLATE_LINES


def _spectrum_1d(rv_kms: float | None, seed: int = 0, snr: float = 200.0) -> Observation:
    """A barycentric 1D spectrum over 5000-5420 A (0.01 A pixels): continuum 1 with Gaussian
    photon-like noise, plus the template lines at ``rv_kms`` (None: featureless)."""
    wave = np.arange(5000.0, 5420.0, 0.01)
    flux = np.ones_like(wave)
    if rv_kms is not None:
        obs_lines = np.array(TEMPLATE_LINES)
        for lam, depth in obs_lines:
            centre = lam * float(doppler_factor(rv_kms))
            sigma = centre / 115000 / 2.3548
            flux -= 0.8 * depth * np.exp(-0.5 * ((wave - centre) / sigma) ** 2)
    rng = np.random.default_rng(seed)
    flux = flux + rng.normal(0.0, 1.0 / snr, wave.size)
    return Observation(flux=flux, variance=np.full_like(wave, 1.0 / snr**2), wave=wave, mask=np.ones(wave.size, bool),
                       medium="air", frame="barycentric", instrument="HARPS", drs_version="test", kind="s1d",
                       source=f"synthetic-rv-{rv_kms}.fits")


def test_unreliable_measured_rv_is_not_applied():
    obs = _spectrum_1d(None)
    result = preprocess(obs)
    meas = result.rv_measurement
    assert meas is not None and not meas.reliable  # a CCF was made and found only noise
    assert Flag.RV_MEASURED in result.flags and Flag.RV_UNRELIABLE in result.flags
    assert result.rv_kms is None and result.rv_source == "none"
    assert result.summary()["rv_kms"] is None and result.summary()["rv_ccf_contrast"] == pytest.approx(meas.contrast)
    assert any("not applied" in n for n in result.notes)
    # exactly the input an explicit "no stellar RV shift" gives: nothing was moved
    unshifted = preprocess(obs, PreprocessConfig(rv_source="none"))
    np.testing.assert_array_equal(result.x, unshifted.x)


def test_reliable_measured_rv_is_applied():
    rv = 37.5
    result = preprocess(_spectrum_1d(rv))
    assert result.rv_measurement.reliable
    assert Flag.RV_MEASURED in result.flags and Flag.RV_UNRELIABLE not in result.flags
    assert result.rv_source == "measured" and result.rv_kms == pytest.approx(rv, abs=0.3)
    unshifted = preprocess(_spectrum_1d(rv), PreprocessConfig(rv_source="none"))
    assert not np.array_equal(result.x, unshifted.x)


def test_analytic_grid_file_is_not_shifted_and_catalogue_rv_is_null(tiny_grid, tmp_path):
    """A simulated HARPS-N e2ds from the analytic grid (whose lines are not the template's):
    the CCF is unreliable, so the catalogue row's rv_kms is null (NaN before Parquet)."""
    from survey_estimator.e2ds_writer import E2dsSimulator, Exposure

    sim = E2dsSimulator(tiny_grid)
    written = sim.write(tmp_path / "HARPN.2016-01-11T01:00:00.000_e2ds_A.fits",
                        Exposure(5500.0, 4.5, -0.25, 5.0, snr=80.0, rv=0.0, berv=5.0, seed=3))
    from survey_estimator.instruments import read_observation

    obs = read_observation(str(written.e2ds), blaze=str(written.blaze))
    result = preprocess(obs)
    assert Flag.RV_UNRELIABLE in result.flags and not result.rv_measurement.reliable
    assert result.rv_kms is None and Flag.BERV_APPLIED in result.flags
    row = read_one(str(written.e2ds), ReadOptions(blaze_file=str(written.blaze)))
    assert row["status"] == "ok" and row["flags"] & int(Flag.RV_UNRELIABLE)
    assert math.isnan(row["rv_kms"])
