"""The forward model, the likelihood fit and the Cramer-Rao bound on the tiny analytic grid."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from survey_estimator.fit import FitConfig, Fitter, FitFlag, cramer_rao, fit_spectra
from survey_estimator.fit.bound import noise_variance
from survey_estimator.forward import ForwardConfig, ForwardModel
from survey_estimator.sampling.interpolation import GridInterpolator
from survey_estimator.sampling.spectrum import SpectrumRenderer
from survey_estimator.synth.store import GridStore

INSIDE = np.array([[5310.0, 4.35, -0.2, 6.3], [5720.0, 4.8, -0.4, 11.1], [5100.0, 4.1, -0.05, 3.2]])


@pytest.fixture(scope="module")
def dense(tiny_grid):
    return GridStore(tiny_grid).load_dense()


@pytest.fixture(scope="module")
def model(dense) -> ForwardModel:
    return ForwardModel.from_interpolator(GridInterpolator.from_dense(dense), cache=False, progress=False)


def _observe(model, labels, rv, snr=None, seed=0, tilt=0.04):
    """Noisy (or noiseless) normalised observations with a per-order continuum tilt and RV."""
    g = torch.Generator().manual_seed(seed)
    spec = model.spectra(torch.as_tensor(labels), torch.as_tensor(rv)).double()
    x = torch.linspace(-1, 1, spec.shape[-1], dtype=torch.float64)
    cont = 1 + tilt * torch.randn(spec.shape[0], spec.shape[1], 1, generator=g, dtype=torch.float64) * x
    obs = spec * cont
    var = noise_variance(obs, snr if snr else 1e4)
    if snr:
        obs = obs + torch.randn(obs.shape, generator=g, dtype=torch.float64) * var.sqrt()
    return obs.numpy(), var.numpy(), np.ones(obs.shape, bool)


def test_table_without_macroturbulence_is_the_sampler_renderer_at_nodes(dense):
    interp = GridInterpolator.from_dense(dense)
    fm = ForwardModel.from_interpolator(interp, ForwardConfig(macroturbulence=False), cache=False, progress=False)
    labels = torch.tensor([[5250.0, 4.5, 0.0, 4.0], [6000.0, 4.0, -0.5, 0.0]], dtype=torch.float64)
    ours = fm.spectra(labels).double()
    ref = SpectrumRenderer(interp)(labels.float(), 1.0).double()
    assert float((ours - ref).abs().max()) < 2e-5


def test_macroturbulence_broadens_lines_and_keeps_the_continuum(dense):
    interp = GridInterpolator.from_dense(dense)
    plain = ForwardModel.from_interpolator(interp, ForwardConfig(macroturbulence=False), cache=False, progress=False)
    fm = ForwardModel.from_interpolator(interp, cache=False, progress=False)
    lab = torch.tensor([[5500.0, 4.5, 0.0, 0.0]], dtype=torch.float64)
    a, b = plain.spectra(lab)[0], fm.spectra(lab)[0]
    sharpness = lambda s: float(torch.diff(s, dim=-1).abs().mean())  # noqa: E731
    assert sharpness(b) < 0.97 * sharpness(a)  # broader lines (the analytic lines are wide already)
    assert abs(float(b.mean()) - float(a.mean())) < 2e-3  # equivalent widths kept


def test_jacobian_matches_finite_differences(model):
    labels = torch.as_tensor(INSIDE)
    rv = torch.tensor([0.4, -1.2, 2.0], dtype=torch.float64)
    _, jac = model.spectra_and_jacobian(labels, rv)
    for a, h in enumerate((0.5, 1e-3, 1e-3, 1e-2)):
        d = torch.zeros(4, dtype=torch.float64)
        d[a] = h
        fd = (model.spectra(labels + d, rv).double() - model.spectra(labels - d, rv).double()) / (2 * h)
        scale = float(jac[:, a].abs().max())
        assert scale > 0 and float((fd - jac[:, a]).abs().max()) < 2e-3 * scale + 1e-6, a
    fd = (model.spectra(labels, rv + 0.01).double() - model.spectra(labels, rv - 0.01).double()) / 0.02
    assert float((fd - jac[:, 4]).abs().max()) < 0.02 * float(jac[:, 4].abs().max())


def test_degraded_resolution_broadens_the_model(model):
    lab = torch.as_tensor(INSIDE[:1])
    sharp, soft = model.spectra(lab)[0], model.spectra(lab, resolution=30000.0)[0]
    assert float(torch.diff(soft, dim=-1).abs().mean()) < 0.9 * float(torch.diff(sharp, dim=-1).abs().mean())


def test_fit_recovers_noiseless_labels_exactly(model):
    y, var, mask = _observe(model, INSIDE, [0.5, -0.8, 1.5])
    start = INSIDE + np.array([120.0, 0.15, 0.1, 1.5])
    res = Fitter(model, FitConfig(model_error=0.0)).fit(y, var, mask, start)
    assert res.converged.all()
    assert np.all(np.abs(res.labels - INSIDE) < 1e-3 * np.array([250, 0.5, 0.5, 2.0])), res.labels - INSIDE
    np.testing.assert_allclose(res.rv, [0.5, -0.8, 1.5], atol=1e-3)
    assert (res.flags == 0).all()


def test_interpolation_error_is_added_in_quadrature(model):
    """cov = cov_stat + the grid's interpolation error; the shipped grid carries its measured one,
    a grid without a record none."""
    from survey_estimator.fit.grid import interpolation_error

    y, var, mask = _observe(model, INSIDE[:1], [0.3], snr=80.0)
    plain = Fitter(model).fit(y, var, mask, INSIDE[:1])
    assert model.grid_id and interpolation_error(model.grid_id) is None
    np.testing.assert_array_equal(plain.cov, plain.cov_stat)
    floor = np.array([20.0, 0.04, 0.03, 0.1])
    res = Fitter(model, FitConfig(interpolation_error=tuple(floor))).fit(y, var, mask, INSIDE[:1])
    np.testing.assert_allclose(res.cov - res.cov_stat, np.diag(floor**2)[None], rtol=1e-12)
    np.testing.assert_allclose(res.sigma, np.sqrt(res.sigma_stat**2 + floor**2))
    for grid_id in ("d9572496c88b", "49b7d6d59246"):  # the shipped grid, and the one it superseded
        shipped = interpolation_error(grid_id)
        assert shipped is not None and shipped.shape == (4,) and np.all(shipped > 0)


def test_fit_errors_match_the_bound_on_noisy_spectra(model):
    rng = np.random.default_rng(3)
    n, snr = 24, 60.0
    labels = np.column_stack([rng.uniform(5050, 5950, n), rng.uniform(4.05, 4.95, n), rng.uniform(-0.45, -0.05, n),
                              rng.uniform(3, 20, n)])
    rv = rng.uniform(-1, 1, n)
    y, var, mask = _observe(model, labels, rv, snr=snr, seed=5)
    start = labels + rng.normal(size=(n, 4)) * [60, 0.1, 0.05, 1.0]
    res = fit_spectra(Fitter(model), y, var, mask, start)
    bound = cramer_rao(model, labels, snr * np.ones(n), rv)[:, :4]
    pull = (res.labels - labels) / res.sigma_stat
    ratio = np.sqrt(np.mean(((res.labels - labels) / bound) ** 2, axis=0))
    assert np.all(ratio < 1.6), ratio  # at the noise limit
    assert np.all(np.abs(np.std(pull, axis=0) - 1) < 0.45), np.std(pull, axis=0)  # honest sigmas
    assert np.all(res.model_error == 0) and np.all(np.abs(res.chi2_red - 1) < 0.05)


def test_fisher_matrix_against_finite_differences(model):
    """The bound from the normal equations equals a brute-force Fisher matrix built from finite
    differences of the full model (labels, RV and the 8 x 3 continuum coefficients)."""
    from survey_estimator.fit import continuum

    lab = torch.as_tensor(INSIDE[:1])
    snr = 80.0
    spec = model.spectra(lab).double()[0]
    var = noise_variance(spec[None], snr)[0]
    basis = continuum.design(spec.shape[-1])
    O = spec.shape[0]
    cols = []
    for a, h in enumerate((1.0, 2e-3, 2e-3, 2e-2)):
        d = torch.zeros(4, dtype=torch.float64)
        d[a] = h
        cols.append(((model.spectra(lab + d).double() - model.spectra(lab - d).double())[0] / (2 * h)).reshape(-1))
    cols.append(((model.spectra(lab, 0.01).double() - model.spectra(lab, -0.01).double())[0] / 0.02).reshape(-1))
    for o in range(O):
        for p in range(basis.shape[0]):
            c = torch.zeros_like(spec)
            c[o] = spec[o] * basis[p]
            cols.append(c.reshape(-1))
    J = torch.stack(cols, 1)
    F = J.T @ (J / var.reshape(-1, 1))
    brute = torch.sqrt(torch.diagonal(torch.linalg.inv(F))[:5]).numpy()
    ours = cramer_rao(model, INSIDE[:1], snr)[0]
    np.testing.assert_allclose(ours, brute, rtol=0.02)
    np.testing.assert_allclose(cramer_rao(model, INSIDE[:1], 2 * snr)[0], ours / 2, rtol=1e-6)


def test_poor_fit_on_a_star_the_grid_cannot_describe(model):
    y, var, mask = _observe(model, INSIDE[:2], [0.0, 0.0], snr=100.0, seed=9)
    rng = np.random.default_rng(0)
    px = np.arange(y.shape[-1])
    for o in range(y.shape[1]):  # 80 strong lines per order the grid does not have
        for c in rng.uniform(0, y.shape[-1], 80):
            y[:, o] *= 1 - 0.5 * np.exp(-0.5 * ((px - c) / 3.0) ** 2)
    res = Fitter(model).fit(y, var, mask, INSIDE[:2])
    assert np.all(res.flags & int(FitFlag.POOR_FIT)), res.model_error
    assert np.all(res.chi2_red > 5)
    # a star the grid describes keeps eps = 0 and no flag
    y2, var2, mask2 = _observe(model, INSIDE[:2], [0.0, 0.0], snr=100.0, seed=9)
    assert np.all(Fitter(model).fit(y2, var2, mask2, INSIDE[:2]).flags == 0)


def test_grid_edge_and_missing_corner_flags(dense):
    valid = dense.valid.copy()
    valid[-1, -1, -1] = False  # a node without a spectrum, as in the hot low-gravity corner
    holey = type(dense)(np.where(valid[..., None], dense.flux, np.nan), valid, dense.axes, dense.wave, dense.grid_id)
    fm = ForwardModel.from_interpolator(GridInterpolator.from_dense(holey), cache=False, progress=False)
    assert bool(fm.inside(torch.tensor([[5300.0, 4.3, -0.3, 5.0]]))[0])
    assert not bool(fm.inside(torch.tensor([[5900.0, 4.9, -0.1, 5.0]]))[0])
    truth = np.array([[5000.0, 4.5, -0.2, 5.0], [5500.0, 4.5, -0.2, 5.0]])  # on the Teff edge, inside
    y, var, mask = _observe(fm, truth, [0.0, 0.0])
    res = Fitter(fm).fit(y, var, mask, truth + [200.0, 0, 0, 0])
    assert res.flags[0] & int(FitFlag.AT_GRID_EDGE) and not res.flags[1] & int(FitFlag.AT_GRID_EDGE)


def test_covers_only_first_guesses_the_grid_can_reach(model):
    """A first guess more than cover_sigma of its sigmas outside the Teff / log g / [M/H] range is not
    the fit's to make (it could only end on the edge); inside, or near the edge within its sigmas, it is."""
    lo, hi = np.asarray(model.lo), np.asarray(model.hi)
    mid = (lo + hi) / 2
    sigma = np.tile([50.0, 0.1, 0.05, 1.0], (5, 1))
    guesses = np.tile(mid, (5, 1))
    guesses[1, 0] = lo[0] - 1.5 * 50.0  # 1.5 sigma below the Teff edge: still fitted
    guesses[2, 1] = hi[1] + 3 * 0.1  # 3 sigma above the log g edge
    guesses[3, 2] = lo[2] - 10 * 0.05  # a metal-poor star far below the [M/H] edge
    guesses[4, 3] = hi[3] + 100.0  # v sin i beyond the table is the fit's to bound, not a reason to skip
    fitter = Fitter(model)
    assert fitter.covers(guesses, sigma).tolist() == [True, True, False, False, True]
    assert Fitter(model, FitConfig(cover_sigma=4.0)).covers(guesses, sigma).tolist() == [True, True, True, False, True]


def test_table_cache_round_trip(tiny_grid, monkeypatch, tmp_path):
    monkeypatch.setenv("SURVEY_ESTIMATOR_CACHE", str(tmp_path))
    first = ForwardModel.from_grid(tiny_grid, progress=False)
    files = list((tmp_path / "forward").glob("*.npy"))
    assert len(files) == 1
    again = ForwardModel.from_grid(tiny_grid, progress=False)
    assert torch.equal(first.table, again.table)
    lab = torch.as_tensor(INSIDE)
    assert float((first.spectra(lab) - again.spectra(lab)).abs().max()) == 0.0


def test_compact_packed_grid_trains_like_the_store(tiny_grid, tmp_path):
    """Format 2 (fixed point 2^-11, lzma): the store's nodes to step / sqrt(12) rms, its id and label
    range without loading spectra, and a sampler on it drawing what the store's sampler draws."""
    from survey_estimator.sampling import Sampler, SamplerConfig
    from survey_estimator.synth.packed import COMPACT_FORMAT, load_packed, pack_grid, packed_manifest
    from survey_estimator.synth.store import grid_identity, open_grid

    out = tmp_path / "g2.npz"
    summary = pack_grid(tiny_grid, out, step=2.0**-11)
    dense = GridStore(tiny_grid).load_dense()
    packed = load_packed(out)
    assert summary["format"] == packed_manifest(out)["packed_format"] == COMPACT_FORMAT
    assert np.array_equal(packed.valid, dense.valid) and packed.grid_id == dense.grid_id
    err = np.abs(packed.flux - dense.flux)[dense.valid]
    assert float(err.max()) <= 2.0**-12 * 1.0001 and summary["rms"] == pytest.approx(2.0**-11 / np.sqrt(12), rel=0.2)
    assert grid_identity(str(out)) == grid_identity(tiny_grid) == (dense.grid_id, dense.label_range())
    assert open_grid(str(out)).flux.shape == dense.flux.shape
    draws = []
    for grid in (tiny_grid, str(out)):
        sampler = Sampler(grid, SamplerConfig(snr_range=(50.0, 50.0), seed=1))
        draws.append(sampler.sample(4, generator=torch.Generator().manual_seed(5)))
    np.testing.assert_array_equal(draws[0].labels, draws[1].labels)
    assert float((draws[0].x - draws[1].x).abs().max()) < 5e-3  # the same noise on spectra 1e-4 apart


def test_packed_grid_reproduces_the_store(tiny_grid, tmp_path, monkeypatch):
    from survey_estimator.fit.grid import resolve_grid, shipped_grid, successors
    from survey_estimator.synth.packed import load_packed, pack_grid

    out = tmp_path / "g.npz"
    summary = pack_grid(tiny_grid, out)
    dense = GridStore(tiny_grid).load_dense()
    packed = load_packed(out)
    assert packed.grid_id == dense.grid_id and summary["rms"] < 1e-3
    assert np.array_equal(packed.valid, dense.valid)
    assert float(np.sqrt(np.nanmean((packed.flux - dense.flux) ** 2))) < 1e-3
    # resolution order: explicit, then the recorded store, then the shipped grid, then the cache, else None
    monkeypatch.setenv("SURVEY_ESTIMATOR_CACHE", str(tmp_path / "cache"))
    assert resolve_grid(dense.grid_id, explicit=str(out), recorded=tiny_grid) == str(out)
    assert resolve_grid(dense.grid_id, recorded=tiny_grid) == tiny_grid
    # the shipped network's grid was superseded by the corrected physics, which is shipped instead
    assert successors("49b7d6d59246") == ["d9572496c88b", "49b7d6d59246"]
    assert shipped_grid("d9572496c88b") is not None and shipped_grid("49b7d6d59246") is None
    assert resolve_grid("49b7d6d59246", recorded=str(tmp_path / "gone")) == shipped_grid("d9572496c88b")
    assert resolve_grid("000000000000", recorded=str(tmp_path / "gone")) is None
    cached = tmp_path / "cache" / "grids" / "mine"
    import shutil

    shutil.copytree(tiny_grid, cached)
    assert resolve_grid(dense.grid_id, recorded=str(tmp_path / "gone")) == str(cached)


def test_parity_simulated_file_read_and_built_equals_the_forward_model(tiny_grid, tmp_path):
    """A simulated HARPS-N e2ds (observatory frame, BERV, blaze), read and built by the
    catalogue's code, is the forward model's spectrum at the same labels to the resampling, and
    the fit on it finds those labels."""
    from survey_estimator.e2ds_writer import E2dsSimulator, Exposure
    from survey_estimator.instruments import read_observation
    from survey_estimator.normalise import normalise_numpy
    from survey_estimator.preprocess import PreprocessConfig, preprocess

    sim = E2dsSimulator(tiny_grid)
    truth = np.array([5500.0, 4.5, -0.5, 2.0])  # on the table's nodes: no interpolation between them
    # an old-DRS e2ds carries no stellar RV (the analytic lines are too few for the CCF): a star at
    # rest, observed with a BERV that the reader finds in the header and the builder removes
    files = sim.write(tmp_path / "p_e2ds_A.fits", Exposure(*truth, snr=None, rv=0.0, berv=-17.5, seed=3))
    blaze = (files.blaze.name, files.blaze.read_bytes())
    mi = preprocess(read_observation((files.e2ds.name, files.e2ds.read_bytes()), blaze=blaze), PreprocessConfig(rv_source="none"))
    assert mi.berv_kms == -17.5
    model = sim.model.spectra(torch.as_tensor(truth[None])).double()[0].numpy()
    ref, _ = normalise_numpy(model, mi.mask)
    diff = (mi.flux - ref)[mi.mask]
    assert mi.mask.mean() > 0.9
    assert float(np.sqrt(np.mean(diff**2))) < 2e-3 and float(np.abs(diff).max()) < 2e-2
    res = Fitter(sim.model).fit(mi.flux[None], np.full((1, 8, 4096), 1e-6), mi.mask[None], truth[None] + [100, 0.1, 0.1, 1])
    # linear resampling (twice in simulate + read, never in the model) broadened the lines by a
    # sub-pixel-phase-dependent 0.2-0.5 px and biased v sin i by +0.06 km/s; Keys cubic does not
    assert np.all(np.abs(res.labels[0] - truth) < [2.0, 0.005, 0.002, 0.01]), res.labels[0] - truth


def test_continuum_gram_from_legendre_moments_equals_the_direct_products():
    """The moment route of ``continuum.gram`` (Legendre linearisation) gives the float64 sums of
    the direct products, and any other basis still takes the direct route."""
    from survey_estimator.fit import continuum

    g = torch.Generator().manual_seed(0)
    w = torch.rand(3, 2, 500, generator=g, dtype=torch.float64) * 100
    for basis in (continuum.design(500, 14, dtype=torch.float64),
                  torch.rand(4, 500, generator=g, dtype=torch.float64)):  # not Legendre: direct products
        D = basis.shape[0]
        direct = torch.einsum("bop,dp,ep->bode", w, basis, basis)
        got = continuum.gram(w, basis)
        assert got.shape == (3, 2, D, D)
        assert torch.allclose(got, direct, rtol=1e-10, atol=1e-8 * float(direct.abs().max()))


def test_parity_sampler_equals_simulated_file_read_and_built(tiny_grid, tmp_path):
    """THE input builder on both sides: a ``simulate``d HARPS-N e2ds (cosmics, photon + read
    noise, seed 7), read and built by ``preprocess``, is the training sampler's spectrum for the
    same labels, RV, S/N and noise seed: the model input, the variance AND the mask (order edges,
    cosmic-ray hits and the pixels next to them: every pixel) agree."""
    from survey_estimator.e2ds_writer import E2dsSimulator, Exposure
    from survey_estimator.instruments import read_observation
    from survey_estimator.preprocess import PreprocessConfig, preprocess
    from survey_estimator.sampling import Sampler, SamplerConfig

    truth = [5600.0, 4.3, -0.3, 4.0]
    sim = E2dsSimulator(tiny_grid)
    files = sim.write(tmp_path / "q_e2ds_A.fits", Exposure(*truth, snr=60.0, rv=0.0, berv=0.0, blaze=False, seed=7,
                                                          cosmic_rate=3e-4))
    obs = read_observation((files.e2ds.name, files.e2ds.read_bytes()), blaze=(files.blaze.name, files.blaze.read_bytes()))
    mi = preprocess(obs, PreprocessConfig(rv_source="none"))

    sampler = Sampler(tiny_grid, SamplerConfig(holdout=False, cosmic_rate=3e-4))
    batch = sampler.render(torch.tensor([truth]), snr=60.0, rv=0.0, blaze=False, mask=False,
                           generator=torch.Generator().manual_seed(7))
    mask = batch.mask[0].numpy()
    edges = np.zeros_like(mask)
    edges[:, 16:-16] = True
    holes = edges & ~mask  # inside the order edges: the cosmic hits and their neighbours
    assert 20 < holes.sum() < 400, holes.sum()
    assert np.array_equal(mask, mi.mask)
    # float32 (sampler) against float64 (file): the continuum fit's clipping may flip for a pixel of
    # one order, which moves that order's continuum by ~1e-4; every other order agrees to 2e-5
    diff = np.abs(batch.x[0].numpy() - mi.x).max(axis=(0, 2))
    assert (diff < 2e-5).sum() >= 7 and diff.max() < 3e-4, diff
    assert np.allclose(batch.variance[0].numpy()[mask], mi.variance[mask], rtol=1e-3)
    assert np.all(np.isinf(batch.variance[0].numpy()[~mask]))


def test_a_mismatched_star_gets_the_same_fit_alone_and_in_any_batch(model):
    """A star the model describes only to a few % (a real star) has a rough likelihood: extra
    starts are run for it, the starts are compared by -2 ln L on the same pixels and model error,
    and the answer does not depend on the other spectra of the batch."""
    y, var, mask = _observe(model, INSIDE[:3], [0.0, 0.0, 0.0], snr=100.0, seed=3)
    rng = np.random.default_rng(1)
    px = np.arange(y.shape[-1])
    for o in range(y.shape[1]):  # 30 weak lines per order the grid does not have, in the first star
        for c in rng.uniform(0, y.shape[-1], 30):
            y[0, o] *= 1 - 0.1 * np.exp(-0.5 * ((px - c) / 3.0) ** 2)
    sigma = np.tile([300.0, 0.5, 0.3, 2.0], (3, 1))  # a wide network sigma: extra starts allowed
    start = np.asarray(INSIDE[:3]) + sigma * [1.2, -1.0, 0.5, 0.0]
    fitter = Fitter(model)
    batch = fit_spectra(fitter, y, var, mask, start, sigma)
    alone = fit_spectra(fitter, y[:1], var[:1], mask[:1], start[:1], sigma[:1])
    assert 0 < batch.model_error[0] < fitter.config.poor_fit_model_error  # mismatched, not POOR_FIT
    assert alone.meta["starts"] == 5 and batch.meta["starts"] >= 5  # the four extra starts ran
    np.testing.assert_allclose(batch.labels[0], alone.labels[0], atol=0.05 * np.max(batch.sigma[0]))
    first = fitter.fit(y[:1], var[:1], mask[:1], start[:1])
    score = lambda r: fitter.deviance(y[:1], var[:1], mask[:1], r.labels, r.rv, alone.model_error)[0]
    assert score(alone) <= score(first) + 0.1  # in -2 ln L: never worse than the first fit by more than rounding
