"""The Gaussian likelihood of an observation under the forward model, and its normal equations.

An observation is continuum-normalised flux ``y`` with variance ``var`` and a mask, all (B, O, P)
in the canonical layout (:class:`survey_estimator.preprocess.ModelInput`). The model is
``m = S(theta) * C(c)``: the forward model's spectrum at the non-linear parameters theta
(Teff, log g, [M/H], v sin i, RV) times the per-order continuum polynomial with coefficients c
(:mod:`.continuum`). The per-pixel variance is the noise plus a model-error term,
``var + (eps * m)^2``: eps is the relative mismatch of the model to the star (0 for a spectrum the
forward model made itself; ~ a few % for real stars, see :mod:`.fitter`).

The parameter vector of the normal equations is (theta in units of ``THETA_SCALE``, c flattened
per order), K = 5 + O * D entries; its inverse is the covariance (inverse Fisher matrix), which
marginalises the continuum and the RV.
"""
from __future__ import annotations

import torch

THETA_SCALE = (250.0, 0.5, 0.5, 2.0, 1.0)
"""Units of the non-linear parameters in the normal equations (one grid step; 1 km/s of RV), which
keeps the matrix well conditioned."""
N_THETA = len(THETA_SCALE)


def weights(mask: torch.Tensor, var: torch.Tensor, model: torch.Tensor, model_error: torch.Tensor | float) -> torch.Tensor:
    """(B, O, P) inverse variances, 0 at masked pixels; ``model_error`` (B,) or scalar, relative."""
    eps = torch.as_tensor(model_error, dtype=var.dtype, device=var.device).reshape(-1, 1, 1)
    total = var + (eps * model) ** 2
    good = mask & torch.isfinite(total) & (total > 0)
    return torch.where(good, 1.0 / torch.where(good, total, torch.ones_like(total)), torch.zeros_like(total))


def chi2(y: torch.Tensor, model: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B,) sum of w (y - model)^2 over the usable pixels."""
    return (w * torch.nan_to_num(y - model) ** 2).sum(dim=(1, 2), dtype=torch.float64)


def normal_equations(y, w, spec, jac, cont, basis) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Newton normal matrix and gradient of chi^2 / 2 for ``m = spec * cont``.

    Args:
        y, w, spec, cont: (B, O, P), one float dtype (float32 is accurate enough for the sums
            over 4096 pixels; the result is float64).
        jac: (B, 5, O, P) d spec / d theta in physical units.
        basis: (D, P) continuum basis.
    Returns:
        (A (B, K, K), g (B, K)) float64, with K = 5 + O D, in the scaled parameters.
    """
    from .continuum import gram

    B, O, P = spec.shape
    D = basis.shape[0]
    basis = basis.to(spec.dtype)
    f64 = torch.float64
    scale = torch.as_tensor(THETA_SCALE, dtype=f64, device=spec.device)
    r = torch.nan_to_num(y - spec * cont)
    mt = jac * cont[:, None]  # (B, 5, O, P) d m / d theta
    wmt = mt * w[:, None]
    a_tt = torch.bmm(wmt.reshape(B, N_THETA, O * P), mt.reshape(B, N_THETA, O * P).transpose(1, 2)).to(f64)
    ws = w * spec
    a_tc = (wmt * spec[:, None]).reshape(B * N_THETA * O, P) @ basis.T  # sum_p w m_i s P_d
    a_tc = a_tc.reshape(B, N_THETA, O * D).to(f64)
    a_cc_blocks = gram(ws * spec, basis)  # (B, O, D, D)
    a_cc = torch.zeros(B, O * D, O * D, dtype=f64, device=spec.device)
    for o in range(O):
        a_cc[:, o * D : (o + 1) * D, o * D : (o + 1) * D] = a_cc_blocks[:, o]
    A = torch.cat([torch.cat([a_tt, a_tc], dim=2), torch.cat([a_tc.transpose(1, 2), a_cc], dim=2)], dim=1)
    g_t = (wmt * r[:, None]).sum(dim=(2, 3), dtype=f64)
    g_c = ((ws * r).reshape(B * O, P) @ basis.T).reshape(B, O * D).to(f64)
    # back to the scaled theta (d / d(theta / scale) = scale * d / d theta)
    s = torch.cat([scale, torch.ones(O * D, dtype=f64, device=spec.device)])
    return A * s[None, :, None] * s[None, None, :], torch.cat([g_t, g_c], dim=1) * s[None]


def covariance(A: torch.Tensor) -> torch.Tensor:
    """(B, 5, 5) covariance of theta in physical units from the normal matrix (inverse Fisher),
    the continuum marginalised; orders without data (zero rows) are regularised away. NaN where
    the matrix is singular."""
    K = A.shape[-1]
    diag = torch.diagonal(A, dim1=1, dim2=2)
    reg = torch.where(diag <= 0, torch.ones_like(diag), torch.zeros_like(diag))
    A = A + torch.diag_embed(reg) + torch.eye(K, dtype=A.dtype, device=A.device) * 1e-12 * diag.abs().amax(1, keepdim=True)[..., None]
    inv, info = torch.linalg.inv_ex(A)
    cov = inv[:, :N_THETA, :N_THETA]
    scale = torch.as_tensor(THETA_SCALE, dtype=A.dtype, device=A.device)
    cov = cov * scale[:, None] * scale[None, :]
    bad = (info != 0) | ~torch.isfinite(cov).all(dim=(1, 2)) | (torch.diagonal(cov, dim1=1, dim2=2) <= 0).any(dim=1)
    return torch.where(bad[:, None, None], torch.full_like(cov, float("nan")), cov)
