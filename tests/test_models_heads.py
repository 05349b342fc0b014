"""Gaussian heads and the NLL (eq. 2) against torch.distributions; physical-unit conversion."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from survey_estimator.labels import LABEL_SCALE, LabelScaler
from survey_estimator.models.heads import (
    LOG_SIGMA_MAX,
    LOG_SIGMA_MIN,
    beta_nll_weights,
    DiagonalGaussianHead,
    FullGaussianHead,
    GaussianOutput,
    combine_gaussians,
    gaussian_nll,
    make_head,
    to_physical,
)


@pytest.fixture
def features():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 12, generator=g) * 3, torch.rand(16, 4, generator=g) * 2 - 1


def test_diagonal_head_nll_matches_independent_normal(features):
    x, y = features
    torch.manual_seed(0)
    out = DiagonalGaussianHead(12)(x)
    L = out.scale_tril
    assert torch.equal(L, torch.diag_embed(torch.diagonal(L, dim1=-2, dim2=-1))), "diagonal head must return a diagonal tril"
    ref = -Independent(Normal(out.mean, out.sigma), 1).log_prob(y)
    torch.testing.assert_close(gaussian_nll(out, y, reduction="none"), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gaussian_nll(out, y), ref.mean(), rtol=1e-5, atol=1e-5)


def test_full_head_nll_matches_multivariate_normal(features):
    x, y = features
    torch.manual_seed(0)
    head = FullGaussianHead(12)
    with torch.no_grad():
        head.linear.weight.normal_(0, 0.3)  # make the off-diagonal terms matter
    out = head(x)
    L = out.scale_tril
    assert torch.all(torch.triu(L, diagonal=1) == 0)
    assert torch.all(torch.diagonal(L, dim1=-2, dim2=-1) > 0)
    assert torch.tril(L, diagonal=-1).abs().sum() > 0.1
    ref = -MultivariateNormal(out.mean, scale_tril=L).log_prob(y)
    torch.testing.assert_close(gaussian_nll(out, y, reduction="none"), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.covariance, MultivariateNormal(out.mean, scale_tril=L).covariance_matrix, rtol=1e-5, atol=1e-6)


def test_nll_float64_exact_and_stable_for_tiny_sigmas():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(5, 4, 4, dtype=torch.float64, generator=g)
    cov = A @ A.transpose(-1, -2) * 1e-7 + 1e-9 * torch.eye(4, dtype=torch.float64)  # sigmas ~3e-4
    L = torch.linalg.cholesky(cov)
    mean = torch.zeros(5, 4, dtype=torch.float64)
    y = torch.randn(5, 4, dtype=torch.float64, generator=g)  # residuals of thousands of sigmas
    out = GaussianOutput(mean, L)
    nll = gaussian_nll(out, y, reduction="none")
    assert nll.dtype == torch.float64 and torch.isfinite(nll).all()
    torch.testing.assert_close(nll, -MultivariateNormal(mean, scale_tril=L).log_prob(y), rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("kind", ["diagonal", "full"])
def test_log_sigma_is_soft_clamped_and_gradients_finite(kind):
    head = make_head(kind, 3)
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    out = head(x)
    logd = torch.diagonal(out.scale_tril, dim1=-2, dim2=-1).log()
    assert torch.all(logd >= LOG_SIGMA_MIN - 1e-4) and torch.all(logd <= LOG_SIGMA_MAX + 1e-4)
    gaussian_nll(out, torch.zeros(2, 4)).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


def test_heads_stay_float32_under_autocast(features):
    x, y = features
    head = FullGaussianHead(12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x.bfloat16())
        loss = gaussian_nll(out, y)
    assert out.mean.dtype == torch.float32 and out.scale_tril.dtype == torch.float32 and loss.dtype == torch.float32


def test_combine_gaussians_matches_mixture_moments():
    m1, m2 = torch.tensor([[0.0, 0.0, 0.0, 0.0]]), torch.tensor([[2.0, 0.0, 2.0, 0.0]])
    l1 = torch.diag_embed(torch.tensor([[1.0, 1.0, 1.0, 0.5]]))
    l2 = torch.diag_embed(torch.tensor([[1.0, 3.0, 1.0, 0.5]]))
    outs = [GaussianOutput(m1, l1), GaussianOutput(m2, l2)]
    full = combine_gaussians(outs, diagonal=False)
    torch.testing.assert_close(full.mean, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    expected = torch.tensor([[2.0, 0.0, 1.0, 0.0], [0.0, 5.0, 0.0, 0.0], [1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.25]])
    torch.testing.assert_close(full.covariance[0], expected)  # heads 1 and 3 move together -> covariance 1
    diag = combine_gaussians(outs, diagonal=True)
    torch.testing.assert_close(diag.covariance[0], torch.diag(torch.diagonal(expected)))
    assert torch.count_nonzero(torch.tril(diag.scale_tril, -1)) == 0


def test_to_physical_units_and_calibration():
    scaler = LabelScaler()
    rho = 0.6
    cov_z = torch.tensor([[[0.04, rho * 0.2 * 0.1, 0, 0], [rho * 0.2 * 0.1, 0.01, 0, 0], [0, 0, 0.09, 0], [0, 0, 0, 0.0025]]], dtype=torch.float64)
    out = GaussianOutput(torch.tensor([[0.0, 0.5, -1.0, 1.0]], dtype=torch.float64), torch.linalg.cholesky(cov_z))
    phys = to_physical(out, scaler)
    np.testing.assert_allclose(phys.mean[0].numpy(), scaler.denormalise(np.array([0.0, 0.5, -1.0, 1.0])))
    np.testing.assert_allclose(phys.sigma[0].numpy(), np.array([0.2, 0.1, 0.3, 0.05]) * LABEL_SCALE)
    s = [2.0, 0.5, 1.0, 1.0]
    cal = to_physical(out, scaler, sigma_scale=s)
    np.testing.assert_allclose(cal.sigma[0].numpy(), phys.sigma[0].numpy() * s)
    corr = cal.covariance[0, 0, 1] / (cal.sigma[0, 0] * cal.sigma[0, 1])
    assert math.isclose(float(corr), rho, rel_tol=1e-9)


def test_beta_nll_weights_are_the_detached_geometric_mean_variance_to_the_beta():
    sigma = torch.tensor([[0.1, 0.2, 0.4, 0.8], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    out = GaussianOutput(torch.zeros(2, 4, requires_grad=True), torch.diag_embed(sigma))
    torch.testing.assert_close(beta_nll_weights(out, 0.0), torch.ones(2))
    w = beta_nll_weights(out, 0.5)
    geo_var = torch.tensor([(0.1 * 0.2 * 0.4 * 0.8) ** 0.5, 1.0])  # (prod sigma^2)^(1/4)
    torch.testing.assert_close(w, geo_var ** 0.5)
    assert not w.requires_grad


def test_beta_one_gives_the_mean_the_gradient_of_the_squared_error():
    """With beta 1 and one sigma for every label the mean's gradient no longer shrinks with sigma."""
    target = torch.tensor([[0.5, -0.2, 0.1, 0.0]])
    grads = []
    for s in (0.05, 2.0):
        mean = torch.zeros(1, 4, requires_grad=True)
        out = GaussianOutput(mean, torch.eye(4).unsqueeze(0) * s)
        (gaussian_nll(out, target, reduction="none") * beta_nll_weights(out, 1.0)).sum().backward()
        grads.append(mean.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], -target)  # d/d mean of 0.5 |target - mean|^2
    plain = torch.zeros(1, 4, requires_grad=True)
    gaussian_nll(GaussianOutput(plain, torch.eye(4).unsqueeze(0) * 2.0), target).backward()
    torch.testing.assert_close(plain.grad, -target / 4.0)  # the plain NLL discounts it by sigma^2
