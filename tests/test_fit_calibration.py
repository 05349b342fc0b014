"""The S/N-dependent calibration of the fit's statistical sigmas."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from survey_estimator.fit import FitConfig, Fitter
from survey_estimator.fit.bound import noise_variance
from survey_estimator.fit.calibration import SigmaCalibration, measured_snr, shipped_calibration
from survey_estimator.forward import ForwardModel
from survey_estimator.sampling.interpolation import GridInterpolator
from survey_estimator.synth.store import GridStore


def test_fit_recovers_the_factor_by_which_sigmas_are_off():
    """Errors drawn with sigmas 0.8x / 1.3x the stated ones give those factors back, per S/N bin."""
    rng = np.random.default_rng(3)
    n = 4000
    snr = np.where(rng.random(n) < 0.5, 19.0, 190.0) * rng.uniform(0.95, 1.05, n)
    stated = rng.uniform(0.5, 2.0, (n, 4))
    truth_scale = np.where(snr[:, None] < 50, [0.8, 1.0, 1.3, 1.0], [1.0, 0.9, 1.0, 1.2])
    errors = rng.normal(size=(n, 4)) * stated * truth_scale
    cal = SigmaCalibration.fit(errors, stated, snr, nodes=[19.0, 190.0])
    assert cal.n == (int((snr < 50).sum()), int((snr >= 50).sum()))
    np.testing.assert_allclose(np.asarray(cal.scale), [[0.8, 1.0, 1.3, 1.0], [1.0, 0.9, 1.0, 1.2]], atol=0.06)
    # linear in log S/N between the nodes, constant outside, the lowest node for a missing S/N
    mid = cal.at([np.sqrt(cal.snr[0] * cal.snr[1])])[0]
    np.testing.assert_allclose(mid, (np.asarray(cal.scale[0]) + np.asarray(cal.scale[1])) / 2)
    np.testing.assert_allclose(cal.at([1.0, 1e4, np.nan]), np.asarray(cal.scale)[[0, 1, 0]])
    assert SigmaCalibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError, match="no S/N bin"):
        SigmaCalibration.fit(errors[:10], stated[:10], snr[:10], nodes=[19.0, 190.0])


def test_heavy_tails_share_the_difference_between_the_1_and_2_sigma_quantiles():
    """Errors with heavier tails than a Gaussian (Student t, 4 dof): the factor lies between the
    one that fixes the 1-sigma coverage alone and the one that fixes the 2-sigma coverage alone,
    so both coverages land closer to 68.3 / 95.4 % than with either."""
    rng = np.random.default_rng(5)
    n = 20000
    errors = rng.standard_t(4, size=(n, 4))
    stated = np.ones((n, 4))
    cal = SigmaCalibration.fit(errors, stated, np.full(n, 20.0), nodes=[20.0])
    s = np.asarray(cal.scale[0])
    z = np.abs(errors)
    one, two = np.quantile(z, 0.6827, axis=0), np.quantile(z, 0.9545, axis=0) / 2
    assert np.all((one < s) & (s < two))
    within1, within2 = (z < s).mean(axis=0), (z < 2 * s).mean(axis=0)
    assert np.all(within1 > 0.69) and np.all(within2 < 0.95)  # neither quantile is met exactly
    assert np.all(np.abs(within2 - 0.9545) < np.abs((z < 2 * one).mean(axis=0) - 0.9545))


def test_measured_snr_is_the_median_per_usable_pixel():
    y = np.ones((2, 3, 100))
    var = np.stack([np.full((3, 100), 1 / 400.0), np.full((3, 100), 1 / 25.0)])
    mask = np.ones_like(y, bool)
    mask[0, :, :10] = False
    var[0, :, :10] = 1e6  # masked: ignored
    got = measured_snr(*(torch.as_tensor(a) for a in (y, var, mask)))
    np.testing.assert_allclose(got.numpy(), [20.0, 5.0])
    mask[1] = False
    assert torch.isnan(measured_snr(*(torch.as_tensor(a) for a in (y, var, mask)))[1])


def test_the_fit_scales_its_statistical_covariance_and_keeps_the_raw_one(tiny_grid):
    model = ForwardModel.from_interpolator(GridInterpolator.from_dense(GridStore(tiny_grid).load_dense()),
                                           cache=False, progress=False)
    labels = np.array([[5310.0, 4.35, -0.2, 6.3]])
    spec = model.spectra(torch.as_tensor(labels), torch.as_tensor([0.3])).double()
    var = noise_variance(spec, 80.0)
    y = (spec + torch.randn(spec.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * var.sqrt()).numpy()
    mask = np.ones(y.shape, bool)
    assert shipped_calibration(model.grid_id) is None
    shipped = shipped_calibration("d9572496c88b")  # the packed grid shipped as the fit's default
    assert shipped is not None and np.all((np.asarray(shipped.scale) > 0.9) & (np.asarray(shipped.scale) < 1.4))
    plain = Fitter(model).fit(y, var.numpy(), mask, labels)
    np.testing.assert_array_equal(plain.cov_cal, plain.cov_stat)
    cal = SigmaCalibration(snr=(10.0, 100.0), scale=((2.0, 1.0, 1.0, 1.0), (0.5, 1.5, 1.0, 1.0)), n=(100, 100))
    res = Fitter(model, FitConfig(calibration=cal)).fit(y, var.numpy(), mask, labels)
    np.testing.assert_allclose(res.snr, measured_snr(torch.as_tensor(y), var, torch.as_tensor(mask)).numpy(), rtol=1e-3)
    factor = cal.at(res.snr)[0]
    np.testing.assert_allclose(res.sigma_cal[0], res.sigma_stat[0] * factor, rtol=1e-9)
    np.testing.assert_allclose(res.cov_stat, plain.cov_stat, rtol=1e-9)
    np.testing.assert_allclose(res.cov, res.cov_cal)  # the tiny grid has no interpolation record
    off = Fitter(model, FitConfig(calibration=cal, calibrate=False)).fit(y, var.numpy(), mask, labels)
    np.testing.assert_array_equal(off.cov_cal, off.cov_stat)
