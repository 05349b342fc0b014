"""Evaluation metrics on arrays with known answers, and the figures written as real PNG files."""
from __future__ import annotations

import numpy as np
import pytest

from survey_estimator.evaluation import metrics as M
from survey_estimator.evaluation import plots
from survey_estimator.labels import LABEL_NAMES

N = 20000
PHYS_SIGMA = np.array([80.0, 0.1, 0.04, 0.5])


def _gaussian_sample(seed=0, n=N, sigma_scale=1.0):
    rng = np.random.default_rng(seed)
    true = np.column_stack([rng.uniform(3500, 9750, n), rng.uniform(0, 5, n), rng.uniform(-2.5, 0.5, n), rng.uniform(0, 30, n)])
    sigma = PHYS_SIGMA * rng.uniform(0.5, 2.0, (n, 4))
    mean = true + rng.normal(size=(n, 4)) * sigma
    return true, mean, sigma / sigma_scale


def test_mae_exact_on_known_arrays():
    true = np.zeros((4, 4))
    mean = np.array([[1, -2, 3, 0], [-1, 2, -3, 4], [1, 2, 3, 4], [-1, -2, -3, -4]], float)
    np.testing.assert_allclose(M.mae(true, mean), [1, 2, 3, 3])


def test_perfect_gaussian_gives_68_and_95_percent():
    true, mean, sigma = _gaussian_sample()
    s = M.score(true, mean, sigma)
    np.testing.assert_allclose(s.within_1sigma, M.ONE_SIGMA, atol=0.012)
    np.testing.assert_allclose(s.within_2sigma, M.TWO_SIGMA, atol=0.006)
    # MAE of a Gaussian residual is sqrt(2/pi) * sigma on average
    np.testing.assert_allclose(s.mae, np.sqrt(2 / np.pi) * np.mean(sigma, axis=0), rtol=0.03)
    assert s.n == N


def test_overconfident_sigmas_are_detected_and_calibrated():
    true, mean, sigma = _gaussian_sample(seed=1, sigma_scale=2.0)   # sigmas too small by 2
    raw = M.coverage(true, mean, sigma, 1.0)
    assert np.all(raw < 0.45)
    for method in ("quantile", "rms"):
        scales = M.fit_calibration_scales(true, mean, sigma, method=method)
        np.testing.assert_allclose(scales, 2.0, rtol=0.05)
    # fitted on one set (validation), applied to another (test)
    scales = M.fit_calibration_scales(true, mean, sigma)
    t2, m2, s2 = _gaussian_sample(seed=2, sigma_scale=2.0)
    cal = M.score(t2, m2, s2 * scales)
    np.testing.assert_allclose(cal.within_1sigma, M.ONE_SIGMA, atol=0.015)
    np.testing.assert_allclose(cal.within_2sigma, M.TWO_SIGMA, atol=0.01)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        M.mae(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        M.coverage(np.zeros((3, 4)), np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError):
        M.fit_calibration_scales(np.zeros((3, 4)), np.zeros((3, 4)), np.ones((3, 4)), method="magic")


def test_markdown_tables_hold_the_numbers():
    true, mean, sigma = _gaussian_sample(n=2000)
    rows = {"S/N 20": M.score(true, mean, sigma)}
    t2 = M.mae_table(rows)
    assert t2.splitlines()[0].count("|") == len(LABEL_NAMES) + 3
    assert f"{rows['S/N 20'].mae[0]:.1f}" in t2
    t3 = M.coverage_table(rows)
    assert f"{100 * rows['S/N 20'].within_1sigma[1]:.1f}" in t3
    flat = rows["S/N 20"].flat("test_snr20/")
    assert set(flat) >= {f"test_snr20/mae_{n}" for n in LABEL_NAMES}


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plots_write_png(tmp_path):
    true, mean, sigma = _gaussian_sample(n=3000)
    w, h = _png_size(plots.residual_plot(true, mean, tmp_path / "res.png", title="S/N 20"))
    assert w > 800 and h > 200
    _png_size(plots.sigma_plot(true, sigma, tmp_path / "sig.png", sigma_calibrated=sigma * 1.5, residual=mean - true))
    _png_size(plots.coverage_plot(true, mean, sigma, tmp_path / "cov.png", sigma_calibrated=sigma * 1.1))
    wave = np.linspace(5026, 5395, 8 * 4096).reshape(8, 4096)
    flux = 1 - 0.3 * np.exp(-0.5 * ((wave - 5183.6) / 0.1) ** 2)
    maps = np.random.default_rng(0).random((3, 8, 4096))
    maps /= maps.sum(axis=(1, 2), keepdims=True)
    w, h = _png_size(plots.attention_plot(wave, flux, maps, tmp_path / "sub" / "att.png"))
    assert h > w / 3


def test_attention_on_lines_is_one_for_a_uniform_map_and_large_for_a_map_on_mg_b():
    from survey_estimator.evaluation.metrics import attention_near_lines
    from survey_estimator.layout import canonical_wave
    from survey_estimator.rv import MGB_AIR

    wave = canonical_wave()
    uniform = np.full((1, *wave.shape), 1.0 / wave.size)
    near = attention_near_lines(wave, uniform, MGB_AIR, half_width=0.5)
    assert 0 < near["pixel_share"] < 0.02
    assert near["enrichment"][0] == pytest.approx(1.0)
    on_b2 = np.exp(-0.5 * ((wave - MGB_AIR[1]) / 0.1) ** 2)[None]
    far = np.exp(-0.5 * ((wave - 5300.0) / 0.1) ** 2)[None]
    near = attention_near_lines(wave, np.concatenate([on_b2 / on_b2.sum(), far / far.sum()]), MGB_AIR, half_width=0.5)
    assert near["share"][0] > 0.99 and near["share"][1] < 1e-6
    assert near["enrichment"][0] == pytest.approx(near["share"][0] / near["pixel_share"])


def test_evaluate_bundle_on_held_out_nodes_with_attention_maps(tiny_grid, tmp_path):
    """A (untrained) tiny attention bundle with a DAE scored on the tiny grid's test nodes."""
    import torch

    from survey_estimator.evaluation.evaluate import EvalConfig, evaluate_bundle
    from survey_estimator.models import build_model
    from survey_estimator.models.bundle import ModelBundle

    torch.manual_seed(0)
    est = build_model("attention", {"head": "full"}, preset="tiny")
    bundle = ModelBundle.create(est, name="t", preprocessing_version="p", grid_id="g", dae=build_model("dae", preset="tiny"))
    cfg = EvalConfig(snrs=(30.0, 300.0), n=3, batch_size=2, calibration_snr=(20.0, 200.0))
    report = evaluate_bundle(bundle, tiny_grid, cfg, device="cpu")
    assert set(report.raw) == {"S/N 30", "S/N 300"} and report.raw["S/N 30"].n == 3
    ps = report.sets["S/N 30"]
    assert ps.true.shape == ps.mean.shape == ps.sigma_raw.shape == (3, 4)
    assert np.all(ps.sigma_raw > 0) and np.all(np.isfinite(ps.mean))
    assert report.calibration.shape == (4,) and np.all(report.calibration > 0)
    assert "fitted on 3 validation spectra" in report.calibration_source
    maps = report.attention["maps"]
    assert maps.shape == (3, 8, 4096)
    np.testing.assert_allclose(maps.reshape(3, -1).sum(1), 1.0, rtol=1e-3)  # each block's map is a distribution
    files = {p.name for p in report.write(tmp_path)}
    assert {"attention.png", "residuals_snr30.png", "sigma_snr300.png", "report.md", "scores.json"} <= files
    flat = report.flat_metrics()
    assert "snr300/mae_teff" in flat and "snr30/within_1sigma_teff_cal" in flat and "calibration/teff" in flat
    assert [flat[f"attention/mgb_enrichment_block{b}"] for b in (1, 2, 3)] == report.attention["mgb"]["enrichment"]
    assert "Attention within 0.5 A of the lines (5167.32, 5172.68, 5183.60 A" in (tmp_path / "report.md").read_text()

    # test labels outside every held-out node's Teff: a clear error, not an endless loop
    with pytest.raises(ValueError, match="no test node"):
        evaluate_bundle(bundle, tiny_grid, EvalConfig(snrs=(50.0,), n=2, batch_size=2, teff_range=(9000, 9500),
                                                      fit_calibration=False), device="cpu")
