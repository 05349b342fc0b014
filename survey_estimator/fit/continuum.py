"""The per-order continuum nuisance: a low-order Legendre polynomial per order, solved linearly.

The forward model gives a continuum-normalised spectrum S; the observed (already normalised)
flux is modelled as ``S * C`` with ``C_o(x) = sum_p c_op P_p(x)`` on x in [-1, 1] along each order,
which absorbs what the shared normalisation (an upper-envelope fit) leaves behind.
"""
from __future__ import annotations

import torch

DEGREE = 14
"""Polynomial degree per order (15 coefficients). Measured on sampled spectra (blaze-like shapes
through the shared upper-envelope normalisation): chi^2 / N at the true labels at S/N 200 is
1.16-1.24 for degree 6, 1.03-1.16 for 8, 1.00-1.03 for 10 (cosmics aside); at S/N 200 the fit's
RMS / bound is 1.56 / 3.43 / 1.94 / 1.57 (Teff, log g, [M/H], v sin i) with degree 10 and
1.24 / 1.15 / 1.14 / 0.78 with 14, at the same cost per spectrum."""


def design(n_pixels: int, degree: int = DEGREE, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """(D, P) Legendre polynomials P_0..P_degree on x in [-1, 1], D = degree + 1."""
    x = torch.linspace(-1.0, 1.0, n_pixels, dtype=dtype, device=device)
    rows = [torch.ones_like(x), x]
    for n in range(1, degree):
        rows.append(((2 * n + 1) * x * rows[n] - n * rows[n - 1]) / (n + 1))
    return torch.stack(rows[: degree + 1])


def _linearisation(basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(Legendre P_0..P_{2 degree} (2D - 1, P) in the basis' dtype, L (D*D, 2D - 1) float64) with
    ``P_d P_e = sum_k L[d D + e, k] P_k`` on the pixels, or None when ``basis`` is not the Legendre
    basis of :func:`design` (then :func:`gram` takes the direct products)."""
    D, P = basis.shape
    key = (D, P, basis.dtype, str(basis.device))
    if key not in _LINEARISATION:
        found = None
        ref = design(P, D - 1, dtype=torch.float64, device=basis.device)
        if torch.allclose(basis.to(torch.float64), ref, atol=1e-6):
            ext = design(P, 2 * D - 2, dtype=torch.float64, device=basis.device)  # (2D-1, P)
            products = (ref[:, None, :] * ref[None, :, :]).reshape(D * D, P)
            L = torch.linalg.lstsq(ext.T, products.T).solution.T  # (D*D, 2D-1), exact: degree <= 2D-2
            if float((L @ ext - products).abs().max()) < 1e-9:
                found = (ext.to(basis.dtype), L)
        _LINEARISATION[key] = found
    return _LINEARISATION[key]


_LINEARISATION: dict = {}


def gram(weight: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(B, O, D, D) float64 ``sum_p weight * P_d * P_e`` per order (weight (B, O, P), basis (D, P)
    of one dtype).

    For the Legendre basis of :func:`design` the products are themselves Legendre series up to
    degree 2D - 2, so the sums come from the 2D - 1 weighted moments ``sum_p weight * P_k`` (one
    (B O, P) x (P, 2D - 1) product) and a fixed float64 linearisation: 29 instead of 225 sums per
    pixel for D = 15. Any other basis takes the direct (D*D, P) products."""
    B, O, P = weight.shape
    D = basis.shape[0]
    lin = _linearisation(basis)
    if lin is not None:
        ext, L = lin
        moments = (weight.reshape(B * O, P) @ ext.to(weight.dtype).T).to(torch.float64)  # (B O, 2D-1)
        return (moments @ L.T).reshape(B, O, D, D)
    products = (basis[:, None, :] * basis[None, :, :]).reshape(D * D, P)
    return (weight.reshape(B * O, P) @ products.T).reshape(B, O, D, D).to(torch.float64)


def evaluate(coef: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Continuum (B, O, P) from coefficients (B, O, D) and the (D, P) basis (dtype of the basis)."""
    return coef.to(basis.dtype) @ basis


def solve(y: torch.Tensor, spec: torch.Tensor, weight: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Weighted least-squares coefficients (B, O, D), float64, of ``y ~ spec * C`` per order.

    Args:
        y, spec, weight: (B, O, P) (any float dtype: the products run in it, the solve in
            float64); weight is 0 at masked pixels.
    """
    B, O, P = spec.shape
    D = basis.shape[0]
    basis = basis.to(spec.dtype)
    AtWA = gram(weight * spec * spec, basis)  # (B, O, D, D) float64
    AtWy = ((weight * spec * y).reshape(B * O, P) @ basis.T).reshape(B, O, D).to(torch.float64)
    eye = torch.eye(D, dtype=torch.float64, device=spec.device) * 1e-9 * AtWA.diagonal(dim1=-2, dim2=-1).amax(-1, keepdim=True)[..., None].clamp_min(1e-30)
    coef = torch.linalg.solve(AtWA + eye, AtWy[..., None])[..., 0]
    # orders without data keep a flat continuum of 1
    empty = weight.sum(-1) <= 0
    flat = torch.zeros_like(coef)
    flat[..., 0] = 1.0
    return torch.where(empty[..., None], flat, coef)
