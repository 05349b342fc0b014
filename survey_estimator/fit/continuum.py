"""The per-order continuum nuisance: a low-order Legendre polynomial per order, solved linearly.

The forward model gives a continuum-normalised spectrum S; the observed (already normalised)
flux is modelled as ``S * C`` with ``C_o(x) = sum_p c_op P_p(x)`` on x in [-1, 1] along each order,
which absorbs what the shared normalisation (an upper-envelope fit) leaves behind.
"""
from __future__ import annotations

import torch

DEGREE = 2
"""Polynomial degree per order (3 coefficients)."""


def design(n_pixels: int, degree: int = DEGREE, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """(D, P) Legendre polynomials P_0..P_degree on x in [-1, 1], D = degree + 1."""
    x = torch.linspace(-1.0, 1.0, n_pixels, dtype=dtype, device=device)
    rows = [torch.ones_like(x), x]
    for n in range(1, degree):
        rows.append(((2 * n + 1) * x * rows[n] - n * rows[n - 1]) / (n + 1))
    return torch.stack(rows[: degree + 1])


def evaluate(coef: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Continuum (B, O, P) from coefficients (B, O, D) and the (D, P) basis."""
    return coef @ basis


def solve(y: torch.Tensor, spec: torch.Tensor, weight: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Weighted least-squares coefficients (B, O, D) of ``y ~ spec * C`` per order.

    Args:
        y, spec, weight: (B, O, P); weight is 0 at masked pixels.
    """
    B, O, P = spec.shape
    D = basis.shape[0]
    sw = torch.sqrt(weight)
    A = (spec * sw).reshape(B * O, 1, P) * basis[None]  # (B O, D, P) whitened design
    AtWA = torch.bmm(A, A.transpose(1, 2)).reshape(B, O, D, D)
    AtWy = torch.bmm(A, (y * sw).reshape(B * O, P, 1)).reshape(B, O, D)
    eye = torch.eye(D, dtype=A.dtype, device=A.device) * 1e-9
    coef = torch.linalg.solve(AtWA + eye, AtWy[..., None])[..., 0]
    # orders without data keep a flat continuum of 1
    empty = weight.sum(-1) <= 0
    flat = torch.zeros_like(coef)
    flat[..., 0] = 1.0
    return torch.where(empty[..., None], flat, coef)
