"""The training-time sampler on the tiny analytic grid: interpolation, rotation, resampling,
noise, masks, splits and the shared normalisation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from survey_estimator.layout import canonical_wave, doppler_factor
from survey_estimator.normalise import model_input, normalise_orders
from survey_estimator.sampling import (
    GridInterpolator,
    OutsideGridError,
    Sampler,
    SamplerConfig,
    gray_kernel,
    gray_profile,
    rotational_broadening,
)
from survey_estimator.sampling import nuisance
from survey_estimator.sampling.resample import LayoutResampler, doppler_factors
from survey_estimator.sampling.splits import TEST, TRAIN, VAL, split_nodes
from survey_estimator.synth.store import DenseGrid, GridStore


@pytest.fixture(scope="module")
def dense(tiny_grid) -> DenseGrid:
    return GridStore(tiny_grid).load_dense()


@pytest.fixture(scope="module")
def sampler(dense) -> Sampler:
    return Sampler(dense, SamplerConfig(seed=3))


# -- interpolation -------------------------------------------------------------------------------
def test_interpolation_is_exact_at_every_node(dense):
    interp = GridInterpolator.from_dense(dense)
    idx = np.argwhere(dense.valid)
    labels = torch.tensor([[dense.axes[a][i[a]] for a in range(3)] for i in idx], dtype=torch.float64)
    out = interp.interpolate(labels).numpy()
    assert np.array_equal(out, dense.flux[tuple(idx.T)])  # bit for bit


def test_interpolation_is_linear_between_nodes(dense):
    interp = GridInterpolator.from_dense(dense)
    t0, t1 = dense.axes[0][1], dense.axes[0][2]
    g, m = dense.axes[1][1], dense.axes[2][0]
    out = interp.interpolate(torch.tensor([[0.25 * t0 + 0.75 * t1, g, m]]))[0].numpy()
    want = 0.25 * dense.flux[1, 1, 0] + 0.75 * dense.flux[2, 1, 0]
    np.testing.assert_allclose(out, want, atol=2e-6)
    assert np.abs(dense.flux[1, 1, 0] - dense.flux[2, 1, 0]).max() > 0.01  # the check has teeth


def test_missing_corner_and_outside_labels_raise(dense):
    valid = dense.valid.copy()
    valid[2, 1, 0] = False
    holed = DenseGrid(dense.flux, valid, dense.axes, dense.wave, dense.grid_id)
    interp = GridInterpolator.from_dense(holed)
    t = 0.5 * (dense.axes[0][1] + dense.axes[0][2])
    with pytest.raises(OutsideGridError):
        interp.interpolate(torch.tensor([[t, dense.axes[1][1], dense.axes[2][0]]]))
    with pytest.raises(OutsideGridError):
        interp.interpolate(torch.tensor([[dense.axes[0][-1] + 100.0, 4.5, 0.0]]))
    # draws avoid every cell touching the missing node (Teff 5250-5750, log g 4.0-5.0)
    labels = interp.draw_labels(3000, torch.Generator().manual_seed(0)).numpy()
    inside = (labels[:, 0] > dense.axes[0][1]) & (labels[:, 0] < dense.axes[0][3]) & (labels[:, 1] < dense.axes[1][2])
    assert not inside.any()
    assert labels[:, 0].min() >= dense.axes[0][0] and labels[:, 0].max() <= dense.axes[0][-1]
    assert (labels[:, 3] >= 0).all() and (labels[:, 3] <= 30).all()
    rows, w = interp.corners(torch.as_tensor(labels))  # every drawn label can be interpolated
    assert bool((rows[w > 0] >= 0).all())


# -- rotation --------------------------------------------------------------------------------------
def test_gray_kernel_matches_the_analytic_profile():
    dv, vsini = 0.5, 20.0
    k = gray_kernel(torch.tensor([vsini]), dv, 45)[0].double()
    assert abs(float(k.sum()) - 1.0) < 1e-12
    v = torch.arange(-45, 46, dtype=torch.float64) * dv
    g = gray_profile(v, vsini)
    interior = v.abs() < 0.9 * vsini
    rel = ((k / dv - g)[interior] / g[interior]).abs().max()
    assert rel < 2e-3
    assert float(k[v.abs() > vsini + dv].abs().max()) == 0.0
    # analytic second moment of Gray's profile with eps = 0.6: <x^2> from the two terms
    eps = 0.6
    m2 = vsini**2 * (2 * (1 - eps) * math.pi / 8 + math.pi * eps / 2 * 4 / 15) / (math.pi * (1 - eps / 3))
    assert abs(float((k * v**2).sum()) - (m2 + dv**2 / 12)) / m2 < 1e-3  # + the pixel box
    # v sin i = 0: a delta
    k0 = gray_kernel(torch.tensor([0.0]), dv, 5)[0]
    assert float(k0[5]) == 1.0 and float(k0.abs().sum()) == 1.0


def test_broadening_a_delta_line_gives_the_profile_and_zero_is_identity():
    L, dv, depth, c = 2001, 0.5, 0.4, 1000
    flux = torch.ones(3, L, dtype=torch.float64)
    flux[:, c] -= depth
    out = rotational_broadening(flux, torch.tensor([0.0, 10.0, 25.0]), dv)
    assert torch.equal(out[0], flux[0])  # v sin i = 0 is the identity
    for row, vsini in ((1, 10.0), (2, 25.0)):
        absorbed = 1.0 - out[row]
        assert abs(float(absorbed.sum()) - depth) < 1e-9  # equivalent width conserved
        v = (torch.arange(L, dtype=torch.float64) - c) * dv
        analytic = depth * dv * gray_profile(v, vsini)
        inner = v.abs() < 0.85 * vsini
        np.testing.assert_allclose(absorbed[inner].numpy(), analytic[inner].numpy(), rtol=3e-3)
        assert float(absorbed[v.abs() > vsini + dv].abs().max()) < 1e-9


def test_rotation_batch_matches_one_by_one(dense):
    flux = torch.as_tensor(dense.flux[1:3, 1, 0])
    interp = GridInterpolator.from_dense(dense)
    both = rotational_broadening(flux, torch.tensor([4.0, 17.0]), interp.velocity_step, vsini_max=30)
    one = rotational_broadening(flux[1:], torch.tensor([17.0]), interp.velocity_step)
    np.testing.assert_allclose(both[1].numpy(), one[0].numpy(), atol=2e-6)


# -- resampling and RV -------------------------------------------------------------------------------
def test_resampling_places_a_line_at_its_doppler_shifted_wavelength(dense):
    wave = dense.wave
    lam0 = 5183.604  # Mg b2 (air)
    flux = 1 - 0.5 * np.exp(-0.5 * ((wave - lam0) / 0.03) ** 2)
    res = LayoutResampler(wave)
    rv = 27.3
    out = res(torch.as_tensor(flux[None], dtype=torch.float64), doppler_factors(rv))[0].numpy()
    target = canonical_wave()
    exact = 1 - 0.5 * np.exp(-0.5 * ((target / doppler_factor(rv) - lam0) / 0.03) ** 2)
    linear = np.interp(target / doppler_factor(rv), wave, flux)
    err, err_linear = np.abs(out - exact).max(), np.abs(linear - exact).max()
    assert err < 3e-4 and err < 0.2 * err_linear, (err, err_linear)  # Keys cubic: far closer to the true profile
    row = 3  # HARPS-N row 39
    x = np.argmin(out[row])
    lam_obs = lam0 * doppler_factor(rv)
    assert abs(target[row, x] - lam_obs) < 0.015  # within a pixel of the shifted centre
    with pytest.raises(ValueError):
        res(torch.as_tensor(flux[None]), doppler_factors(3000.0))


# -- nuisance ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("snr", [30.0, 150.0])
def test_noise_has_the_requested_median_continuum_snr(snr):
    g = torch.Generator().manual_seed(1)
    B, O, P = 1, 3, 4096
    shape = nuisance.linear_slant(B, O, P, 0.3, g) * nuisance.blaze_like(B, O, P, g)
    counts = nuisance.scale_to_counts(shape.double(), shape.double(), torch.tensor([snr]))
    draws = torch.stack([nuisance.add_noise(counts, 0.0, g) for _ in range(120)])
    measured = counts[0] / draws[:, 0].std(dim=0)
    assert abs(float(measured.median()) / snr - 1) < 0.03


def test_sampled_batch_noise_matches_its_snr(sampler):
    labels = torch.tensor([[5600.0, 4.4, -0.2, 3.0]] * 4)
    batch = sampler.render(labels, snr=torch.tensor([25.0, 50.0, 100.0, 200.0]), blaze=False, mask=False,
                           generator=torch.Generator().manual_seed(5))
    resid = (batch.x[:, 0] - batch.clean[:, 0])
    cont = batch.clean[:, 0] > -0.005  # continuum pixels of the clean spectrum
    for i, snr in enumerate((25.0, 50.0, 100.0, 200.0)):
        sigma = float(resid[i][cont[i]].std())
        assert abs(1.0 / sigma / snr - 1) < 0.05


def test_bad_pixel_mask_rates():
    g = torch.Generator().manual_seed(2)
    m = nuisance.bad_pixel_mask(64, 8, 4096, rate=2e-3, edge_prob=0.0, generator=g)
    bad = 1 - m.float().mean()
    assert 2e-3 < float(bad) < 2e-3 * 2.5  # isolated pixels + runs (rate/10 x mean length 5)
    e = nuisance.bad_pixel_mask(64, 8, 4096, rate=0.0, edge_prob=1.0, generator=g)
    lost = (~e).sum(-1)
    assert int(lost.min()) >= 50 and int(lost.max()) <= 400
    assert bool(((~e[..., 0]) | (~e[..., -1])).all())  # every order lost one edge



def test_sparse_hits_are_a_poisson_process_of_the_rate():
    g = torch.Generator().manual_seed(4)
    shape, rate = (64, 8, 4096), 1e-3
    counts = [nuisance.sparse_hits(shape, rate, g).numel() for _ in range(20)]
    expected = 64 * 8 * 4096 * (1 - np.exp(-rate))
    assert abs(np.mean(counts) / expected - 1) < 0.01  # 20 draws of ~2,100 hits: 0.5 % sd
    assert np.std(counts) > 0.5 * np.sqrt(expected)  # a random count, not a fixed one
    hits = nuisance.sparse_hits(shape, rate, g)
    assert bool((hits[1:] > hits[:-1]).all()) and int(hits.min()) >= 0 and int(hits.max()) < 64 * 8 * 4096
    assert nuisance.sparse_hits(shape, 0.0, g).numel() == 0


def test_cosmics_raise_only_the_hit_pixels_by_half_to_three_times():
    g = torch.Generator().manual_seed(6)
    counts = torch.full((8, 4096, 16), 200.0).permute(2, 0, 1)  # (16, 8, 4096), not contiguous
    out = nuisance.cosmics(counts, 1e-3, g)
    raised = out > counts
    assert 200 < int(raised.sum()) < 850  # ~524 expected
    ratio = (out[raised] / counts[raised] - 1)
    assert float(ratio.min()) >= 0.5 and float(ratio.max()) <= 3.0
    assert torch.equal(out[~raised], counts[~raised])


@pytest.mark.parametrize("n", [5, 6, 4096])
def test_median_rows_is_numpys_median_ties_included(n):
    rng = np.random.default_rng(n)
    for x in (rng.random((20, n)), rng.integers(0, 3, (20, n)).astype(float)):
        x = x.astype(np.float32)
        got = nuisance.median_rows(torch.from_numpy(x)).numpy()
        assert np.array_equal(got, np.median(x.astype(np.float64), axis=1))


# -- splits ------------------------------------------------------------------------------------------
def test_splits_are_disjoint_isolated_and_deterministic(dense):
    s1 = split_nodes(dense.valid, dense.axes, 0.05, 0.05, seed=3)
    s2 = split_nodes(dense.valid, dense.axes, 0.05, 0.05, seed=3)
    assert np.array_equal(s1.assignment, s2.assignment)
    counts = s1.counts()
    assert counts["val"] >= 1 and counts["test"] >= 1
    assert sum(counts.values()) == int(dense.valid.sum())
    sets = [set(map(tuple, s1.nodes(s))) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    held = s1.held_out
    for a in held:
        for b in held:
            if tuple(a) != tuple(b):
                assert np.abs(a - b).max() >= 2  # isolated


def test_training_never_touches_held_out_nodes(sampler, dense):
    split = sampler.split
    train = sampler.train_interpolator
    full = sampler.interpolator
    held = split.held_out
    assert len(held) >= 2
    held_rows = {int(full.index_map[tuple(i)]) for i in held}
    g = torch.Generator().manual_seed(11)
    labels = train.draw_labels(5000, g)
    rows, w = train.corners(labels)
    used = set(rows[w > 0].unique().tolist())
    assert not (used & held_rows)
    # a label AT a held-out node reads the fill (mean of its neighbours), not the true spectrum
    for i in held:
        at = torch.tensor([[dense.axes[a][i[a]] for a in range(3)]])
        filled = train.interpolate(at)[0].numpy()
        true = dense.flux[tuple(i)]
        assert not np.array_equal(filled, true)
        assert np.abs(filled - true).max() > 1e-3
    # validation and test batches are drawn exactly at their own nodes
    for name, code in (("val", VAL), ("test", TEST)):
        lab = sampler.draw_labels(64, name).numpy()
        nodes = {tuple(dense.axes[a][i[a]] for a in range(3)) for i in split.nodes(name)}
        assert {tuple(float(v) for v in r[:3]) for r in lab} <= nodes
    assert (split.assignment[dense.valid] >= TRAIN).all()


# -- batches -------------------------------------------------------------------------------------------
def test_sample_batch_contract(sampler):
    b = sampler.sample(6, generator=torch.Generator().manual_seed(0))
    assert b.x.shape == (6, 2, 8, 4096) and b.clean.shape == (6, 2, 8, 4096)
    assert b.labels.shape == (6, 4) and b.snr.shape == (6,) and b.rv.shape == (6,)
    assert torch.isfinite(b.x).all() and torch.isfinite(b.clean).all()
    assert torch.equal(b.x[:, 1].bool(), b.mask)
    assert bool(b.clean[:, 1].bool().all())
    assert (b.snr >= 20).all() and (b.snr <= 300).all()
    assert (b.rv.abs() <= 3).all()
    # x is THE shared normalisation of the counts: masked pixels are 0 in channel 0
    assert float(b.x[:, 0][~b.mask].abs().max()) == 0.0
    t = sampler.sample(3, "test", generator=torch.Generator().manual_seed(0))
    assert t.x.shape == (3, 2, 8, 4096)
    again = sampler.sample(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.x, b.x) and torch.equal(again.labels, b.labels)  # reproducible per generator


def test_noiseless_unblazed_render_is_the_normalised_spectrum(sampler):
    labels = torch.tensor([[5400.0, 4.2, -0.3, 8.0], [5900.0, 4.9, -0.1, 0.0]])
    b = sampler.render(labels, snr=None, rv=1.5, blaze=False, mask=False)
    spec = sampler.forward.spectra(labels, torch.tensor([1.5, 1.5])).float()
    # the input builder masks the native order edges (16 px), as for a file; nothing else without
    # noise or bad pixels (training spectra sit on the native pixels: the resampling is the identity)
    edges = torch.ones_like(b.mask)
    edges[..., :16] = False
    edges[..., -16:] = False
    assert torch.equal(b.mask, edges)
    norm, m = normalise_orders(spec, b.mask)
    torch.testing.assert_close(b.x, model_input(norm, m), atol=1e-5, rtol=0)
    # the DAE target is normalised with a full mask: its continuum differs a little near the edges
    torch.testing.assert_close(b.x[:, 0][b.mask], b.clean[:, 0][b.mask], atol=5e-3, rtol=0)
    # with blaze-like shapes the shared normalisation still recovers the spectrum closely
    bb = sampler.render(labels, snr=None, rv=1.5, blaze=True, mask=False, generator=torch.Generator().manual_seed(4))
    assert float((bb.x[:, 0] - b.x[:, 0]).abs().median()) < 0.01
    assert float((bb.x[:, 0] - b.x[:, 0]).abs().max()) > 0  # shapes were applied
