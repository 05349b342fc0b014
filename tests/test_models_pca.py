"""The PCA-front-end estimator (``pca``): the front end computed from spectra, the same on every
rank, kept through checkpoints and bundles, refused when missing, float32 under autocast; learning;
the front end fitted from the grid by the training worker."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from survey_estimator.models import FrontEndNotFitted, GaussianOutput, ModelBundle, PCAConfig, PCAEstimator, build_model
from survey_estimator.models.resolve import load_bundle
from survey_estimator.sampling import Sampler, SamplerConfig
from survey_estimator.training.components import build_networks, fit_front_ends
from survey_estimator.training.config import TrainConfig

from model_testing import O, P, make_input, training_losses


def low_rank_input(n: int, rank: int, pixels: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 2, O, pixels) inputs whose flux is a mean plus ``rank`` fixed patterns per order, and the
    patterns (O, rank, pixels)."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(O, rank, pixels, generator=g) * 0.01
    coeffs = torch.randn(n, O, rank, generator=g)
    flux = -0.1 + torch.einsum("nor,orp->nop", coeffs, patterns)
    return torch.stack([flux, torch.ones_like(flux)], dim=1), patterns


def test_unfitted_front_end_is_refused_and_config_checked():
    net = build_model("pca", {"input_size": [O, 256]}, preset="tiny")
    with pytest.raises(FrontEndNotFitted, match="fit_front_end"):
        net(make_input(2, pixels=256))
    with pytest.raises(ValueError, match="components"):
        PCAConfig(components=64, fit_spectra=32)
    with pytest.raises(ValueError, match="cannot give"):
        net.fit_front_end(make_input(2, pixels=256))


def test_front_end_spans_the_spectra_and_standardises_their_coefficients():
    x, patterns = low_rank_input(64, rank=4)
    net = build_model("pca", {"input_size": [O, 256]}, preset="tiny")  # 4 components
    net.fit_front_end(x)
    basis = net.basis  # (O, 4, 256)
    eye = torch.einsum("okp,ojp->okj", basis, basis)
    torch.testing.assert_close(eye, torch.eye(4).expand(O, 4, 4), atol=1e-5, rtol=0)
    flux = x[:, 0] - net.mean
    rebuilt = torch.einsum("nok,okp->nop", torch.einsum("nop,okp->nok", flux, basis), basis)
    assert (rebuilt - flux).abs().max() < 1e-5 * flux.abs().max() * 100  # the 4 patterns are spanned
    z = (net._coefficients(x) - net.feature_mean) / net.feature_scale
    torch.testing.assert_close(z.mean(0), torch.zeros(O * 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(O * 4), atol=1e-4, rtol=0)
    assert bool(net.fitted)


def test_front_end_is_the_same_whatever_the_random_state():
    """Ranks seed torch differently; the front end they compute from the same spectra must agree."""
    x = make_input(40, seed=3, pixels=256)
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = build_model("pca", {"input_size": [O, 256]}, preset="tiny")
        net.fit_front_end(x)
        nets.append(net)
    for name in ("mean", "basis", "feature_mean", "feature_scale"):
        torch.testing.assert_close(getattr(nets[0], name), getattr(nets[1], name), atol=1e-6, rtol=0)


def test_runs_in_float32_under_bf16_autocast_and_learns():
    torch.manual_seed(0)
    net = build_model("pca", {"head": "full", "input_size": [O, 256]}, preset="tiny")
    x = make_input(48, seed=1, pixels=256)
    net.fit_front_end(x)
    net.eval()
    plain = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = net(x)
    assert isinstance(auto, GaussianOutput) and auto.mean.dtype == torch.float32
    torch.testing.assert_close(auto.mean, plain.mean)
    y = torch.rand(48, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    net.train()
    losses = training_losses(net, x, y, steps=30)
    assert losses[-1] < losses[0] - 1.0, losses
    assert all(not p.requires_grad for p in net.buffers()), "the front end is not trained"


def test_bundle_round_trip_keeps_the_front_end(tmp_path):
    from survey_estimator.preprocess import PREPROCESSING_VERSION

    torch.manual_seed(0)
    est = build_model("pca", {"head": "full"}, preset="tiny")
    est.fit_front_end(make_input(32, seed=4))
    est.eval()
    bundle = ModelBundle.create(est, name="tiny-pca", preprocessing_version=PREPROCESSING_VERSION, grid_id="grid-test")
    loaded = load_bundle(str(bundle.save(tmp_path / "bundle")), device="cpu")
    assert loaded.manifest.architecture == "pca"
    x = make_input(3, seed=5)
    a, b = bundle.predict(x, batch_size=2), loaded.predict(x, batch_size=2)
    for field in ("mean", "sigma", "covariance"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_training_worker_fits_the_front_end_from_the_grid_once(tiny_grid):
    cfg = TrainConfig(grid=tiny_grid, model="pca", head="diag", preset="tiny")
    sampler = Sampler(tiny_grid, SamplerConfig(seed=0))
    a, b = build_networks(cfg), build_networks(cfg)
    fit_front_ends(a, sampler, seed=7)
    fit_front_ends(b, sampler, seed=7)
    est = a["estimator"]
    assert bool(est.fitted) and est.basis.abs().sum() > 0
    torch.testing.assert_close(est.basis, b["estimator"].basis)  # same spectra on every rank
    # the basis captures the grid's spectra: projecting fresh noiseless ones leaves little behind
    x = sampler.with_config(noiseless=True).sample(16, "train", generator=torch.Generator().manual_seed(1), clean=False).x
    flux = x[:, 0] - est.mean
    rebuilt = torch.einsum("nok,okp->nop", torch.einsum("nop,okp->nok", flux, est.basis), est.basis)
    assert ((rebuilt - flux).square().mean() / flux.square().mean()) < 0.5
    before = est.basis.clone()
    fit_front_ends(a, sampler, seed=8)  # fitted (or restored from a checkpoint): kept as it is
    torch.testing.assert_close(est.basis, before, atol=0, rtol=0)


def lined_orders(n: int, sigma: float, pixels: int = 4096, seed: int = 0) -> torch.Tensor:
    """(n, 2, O, pixels) model inputs: resolved absorption lines (Gaussians of 4-8 px sigma, 5-50 %
    deep, one per ~100 px) plus white noise of ``sigma`` (relative to the continuum)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.arange(pixels, dtype=torch.float32)
    n_lines = pixels // 100
    centres = torch.rand(n, O, n_lines, 1, generator=g) * pixels
    widths = 4 + 4 * torch.rand(n, O, n_lines, 1, generator=g)
    depths = 0.05 + 0.45 * torch.rand(n, O, n_lines, 1, generator=g)
    lines = (depths * torch.exp(-0.5 * ((p - centres) / widths) ** 2)).sum(2)
    flux = -lines + sigma * torch.randn(n, O, pixels, generator=g)
    return torch.stack([flux, torch.ones_like(flux)], dim=1)


@pytest.mark.parametrize("sigma", [0.005, 0.02, 0.1])
def test_order_noise_measures_the_pixel_noise_not_the_lines_nor_masked_pixels(sigma):
    from survey_estimator.models.pca import order_noise

    x = lined_orders(4, sigma)
    noise = order_noise(x)
    assert noise.shape == (4, O)
    # DER_SNR reads the lines' curvature as a little noise: +10-20 % at S/N 200 on these dense lines
    # (2-4 % on the full grid's spectra through the sampler, measured 2026-12-07)
    assert ((noise / sigma - 1).abs() < 0.25).all(), noise / sigma
    bad = x.clone()
    bad[:, 0, :, 1000:1400] = 5.0  # a masked stretch of garbage: not seen
    bad[:, 1, :, 1000:1400] = 0.0
    torch.testing.assert_close(order_noise(bad), noise, rtol=0.05, atol=0)
    bad[:, 1, 2] = 0.0  # a wholly masked order: the floor, not NaN
    assert (order_noise(bad)[:, 2] == 1e-4).all()


def test_noise_features_tell_the_net_the_snr():
    x_lo, x_hi = lined_orders(32, 0.1, pixels=1024, seed=1), lined_orders(32, 0.005, pixels=1024, seed=1)
    net = build_model("pca", {"input_size": [O, 1024], "noise_features": True}, preset="tiny")
    net.fit_front_end(lined_orders(32, 0.0, pixels=1024, seed=2))
    z_lo, z_hi = net.features(x_lo), net.features(x_hi)
    k = O * net.config.components
    assert z_lo.shape == (32, k + O)
    # S/N 10 -> ~+1, S/N 200 -> ~-1.2 (the fixed standardisation), the rest unchanged
    assert (z_lo[:, k:] - 1.0).abs().max() < 0.25 and (z_hi[:, k:] + 1.17).abs().max() < 0.25
    plain = build_model("pca", {"input_size": [O, 1024]}, preset="tiny")
    plain.load_state_dict({k_: v for k_, v in net.state_dict().items() if not k_.startswith(("fc.0", "head"))}, strict=False)
    assert plain.features(x_lo).shape == (32, k)
    torch.testing.assert_close(plain.features(x_lo), z_lo[:, :k])
    assert isinstance(net(x_lo), GaussianOutput)


def test_selected_by_the_cli():
    import argparse

    from survey_estimator.commands.train import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["--grid", "g", "--model", "pca"]).model == "pca"
