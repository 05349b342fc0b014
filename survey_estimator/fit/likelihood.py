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
marginalises the continuum and the RV. The matrix is kept in blocks (:class:`NormalEquations`):
the continuum block is block-diagonal per order, so only the 5 x 5 Schur complement is ever
solved or inverted.
"""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class NormalEquations:
    """Gauss-Newton normal matrix A and gradient g of chi^2 / 2 in blocks, float64, in the scaled
    parameters (theta / ``THETA_SCALE``, then the continuum coefficients order by order).

    The continuum block is block-diagonal (one D x D block per order), so the theta part of a
    solve or of the inverse comes from the Schur complement ``A_tt - A_tc A_cc^-1 A_ct`` (O small
    D x D solves and one 5 x 5) instead of the dense K x K matrix, K = 5 + O D.

    Attributes:
        tt: (B, 5, 5) theta-theta block; tc: (B, 5, O, D) theta-continuum block;
        cc: (B, O, D, D) the per-order continuum blocks; gt: (B, 5), gc: (B, O, D) the gradient.
    """

    tt: torch.Tensor
    tc: torch.Tensor
    cc: torch.Tensor
    gt: torch.Tensor
    gc: torch.Tensor

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (B, K, K), g (B, K)): the full matrix and gradient (a reference for the block solves)."""
        B, O, D = self.cc.shape[:3]
        tc = self.tc.reshape(B, N_THETA, O * D)
        cc = torch.zeros(B, O * D, O * D, dtype=self.cc.dtype, device=self.cc.device)
        for o in range(O):
            cc[:, o * D : (o + 1) * D, o * D : (o + 1) * D] = self.cc[:, o]
        A = torch.cat([torch.cat([self.tt, tc], dim=2), torch.cat([tc.transpose(1, 2), cc], dim=2)], dim=1)
        return A, torch.cat([self.gt, self.gc.reshape(B, O * D)], dim=1)

    def diagonals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(diagonal of tt (B, 5), diagonals of the continuum blocks (B, O, D))."""
        return torch.diagonal(self.tt, dim1=-2, dim2=-1), torch.diagonal(self.cc, dim1=-2, dim2=-1)

    def _schur(self, tt, cc, with_gradient: bool):
        """(S (B, 5, 5), reduced gradient (B, 5) or None, (B,) bool: a continuum block was singular)
        for the given (modified) diagonal blocks."""
        B, O, D = cc.shape[:3]
        rhs = self.tc.permute(0, 2, 3, 1)  # (B, O, D, 5): A_ct per order
        if with_gradient:
            rhs = torch.cat([rhs, self.gc[..., None]], dim=3)
        X, info = torch.linalg.solve_ex(cc, rhs)  # A_cc^-1 [A_ct | g_c] per order
        tcx = torch.bmm(self.tc.reshape(B, N_THETA, O * D), X.reshape(B, O * D, -1))  # (B, 5, 5 or 6)
        S = tt - tcx[..., :N_THETA]
        g = self.gt - tcx[..., N_THETA] if with_gradient else None
        return S, g, (info != 0).any(dim=1)

    def theta_step(self, lam: torch.Tensor) -> torch.Tensor:
        """(B, 5) Levenberg-Marquardt step of theta (scaled units) with damping ``lam`` (B,):
        ``(A + lam diag(A)) step = g`` solved with the continuum eliminated; 0 where singular."""
        dt, dc = self.diagonals()
        tt = self.tt + torch.diag_embed(lam[:, None] * dt.clamp_min(1e-12))
        cc = self.cc + torch.diag_embed(lam[:, None, None] * dc.clamp_min(1e-12))
        S, g, _ = self._schur(tt, cc, True)
        step, _ = torch.linalg.solve_ex(S, g)
        return torch.nan_to_num(step)

    def theta_inverse(self) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, 5, 5) theta block of A^-1 in scaled units: the covariance with the continuum
        marginalised, (B,) bool singular). Orders without data (zero rows) are regularised away and
        a ridge of 1e-12 of the largest diagonal entry is added, as to the dense matrix."""
        dt, dc = self.diagonals()
        ridge = 1e-12 * torch.maximum(dt.abs().amax(1), dc.abs().flatten(1).amax(1))
        tt = self.tt + torch.diag_embed(torch.where(dt <= 0, 1.0, 0.0).to(dt.dtype) + ridge[:, None])
        cc = self.cc + torch.diag_embed(torch.where(dc <= 0, 1.0, 0.0).to(dc.dtype) + ridge[:, None, None])
        S, _, singular = self._schur(tt, cc, False)
        inv, info = torch.linalg.inv_ex(S)
        return inv, singular | (info != 0)


def normal_equations(y, w, spec, jac, cont, basis) -> NormalEquations:
    """Gauss-Newton normal equations of chi^2 / 2 for ``m = spec * cont``, in blocks.

    Args:
        y, w, spec, cont: (B, O, P), one float dtype (float32 is accurate enough for the sums
            over 4096 pixels; the result is float64).
        jac: (B, 5, O, P) d spec / d theta in physical units.
        basis: (D, P) continuum basis.
    Returns:
        :class:`NormalEquations` in the scaled parameters (d m / d theta = jac * cont,
        d m / d c_od = spec * P_d).
    """
    from .continuum import gram

    B, O, P = spec.shape
    D = basis.shape[0]
    basis = basis.to(spec.dtype)
    f64 = torch.float64
    scale = torch.as_tensor(THETA_SCALE, dtype=f64, device=spec.device)
    wc = w * cont
    jflat = jac.reshape(B, N_THETA, O * P)
    # per-pixel factors so that every sum is jac times one (B, O, P) array: one (B, 5, O, P) temporary
    buf = torch.mul(jac, (wc * cont)[:, None])  # w (d m / d theta) cont
    tt = torch.bmm(buf.reshape(B, N_THETA, O * P), jflat.transpose(1, 2)).to(f64)
    torch.mul(jac, (wc * spec)[:, None], out=buf)  # w (d m / d theta) spec
    tc = (buf.reshape(B * N_THETA * O, P) @ basis.T).reshape(B, N_THETA, O, D).to(f64)
    r = torch.nan_to_num(y - spec * cont)
    gt = torch.bmm(jflat, (wc * r).reshape(B, O * P, 1))[..., 0].to(f64)
    ws = w * spec
    cc = gram(ws * spec, basis)  # (B, O, D, D)
    gc = ((ws * r).reshape(B * O, P) @ basis.T).reshape(B, O, D).to(f64)
    # back to the scaled theta (d / d(theta / scale) = scale * d / d theta)
    return NormalEquations(tt * scale[:, None] * scale[None, :], tc * scale[:, None, None], cc, gt * scale, gc)


def covariance(ne: NormalEquations) -> torch.Tensor:
    """(B, 5, 5) covariance of theta in physical units from the normal equations (inverse Fisher),
    the continuum marginalised; orders without data (zero rows) are regularised away. NaN where
    the matrix is singular."""
    inv, singular = ne.theta_inverse()
    scale = torch.as_tensor(THETA_SCALE, dtype=inv.dtype, device=inv.device)
    cov = inv * scale[:, None] * scale[None, :]
    bad = singular | ~torch.isfinite(cov).all(dim=(1, 2)) | (torch.diagonal(cov, dim1=1, dim2=2) <= 0).any(dim=1)
    return torch.where(bad[:, None, None], torch.full_like(cov, float("nan")), cov)
