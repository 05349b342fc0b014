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


def test_selected_by_the_cli():
    import argparse

    from survey_estimator.commands.train import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["--grid", "g", "--model", "pca"]).model == "pca"
