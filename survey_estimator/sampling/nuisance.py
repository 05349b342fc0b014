"""What real spectra have and synthetic ones lack: per-order shapes, bad pixels, cosmics, noise.

All functions are batched torch, take an optional ``torch.Generator`` and return tensors on its
device (or ``device``). Shapes: B spectra, O orders, P pixels per order. The pixel coordinate
inside an order is ``x = linspace(-1, 1, P)``.

Noise model and the meaning of S/N (used by the sampler and the e2ds simulator alike):

    counts = k * continuum_shape * spectrum,  sigma^2 = max(counts, 0) + read_noise^2,

where k is set so that the MEDIAN over all pixels of the orders of ``continuum / sigma_continuum``
equals the requested S/N ("median S/N per pixel at the continuum"); with no read noise the
continuum counts at that median are S/N^2 and sigma per pixel is ``signal / SNR * sqrt(ref /
signal)`` scaled like photon noise (ref = the median continuum). Line cores therefore have lower
S/N than the continuum, and orders with lower blaze efficiency lower S/N, as in real data.
"""
from __future__ import annotations

import math

import torch


def _x(P: int, device, dtype=torch.float32) -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, P, device=device, dtype=dtype)


def _u(shape, generator, device, lo=0.0, hi=1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=generator, device=device)


def linear_slant(B: int, O: int, P: int, max_slope: float = 0.3, generator=None, device="cpu") -> torch.Tensor:
    """The seed's per-order linear slant ``1 + s x``, s ~ U(-max_slope, max_slope): (B, O, P)."""
    s = _u((B, O, 1), generator, device, -max_slope, max_slope)
    return 1.0 + s * _x(P, device)


def blaze_like(B: int, O: int, P: int, generator=None, device="cpu") -> torch.Tensor:
    """Echelle blaze-like shapes, peak ~1: (B, O, P).

    Each order gets, at random, either ``sinc^2(h (x - c))`` (the grating blaze; edge values
    0.25-0.75 of the peak for h in 0.3-0.6) or a parabola ``1 - q (x - c)^2`` (q in 0.2-0.6),
    with the centre c ~ U(-0.2, 0.2), times a relative order efficiency in 0.7-1.
    """
    x = _x(P, device)
    c = _u((B, O, 1), generator, device, -0.2, 0.2)
    h = _u((B, O, 1), generator, device, 0.3, 0.6)
    q = _u((B, O, 1), generator, device, 0.2, 0.6)
    eff = _u((B, O, 1), generator, device, 0.7, 1.0)
    use_sinc = torch.rand((B, O, 1), generator=generator, device=device) < 0.5
    sinc2 = torch.sinc(h * (x - c)) ** 2
    parab = torch.clamp(1.0 - q * (x - c) ** 2, min=0.05)
    return eff * torch.where(use_sinc, sinc2, parab)


def sparse_hits(shape, rate: float, generator=None, device="cpu") -> torch.Tensor:
    """Flat indices (n,), sorted and distinct, of the pixels of an array of ``shape`` hit by a
    Poisson process of ``rate`` hits per pixel: a Poisson number of hits placed uniformly (a pixel is
    hit with probability 1 - exp(-rate): ``rate`` to a relative rate / 2). Draws O(hits) numbers
    instead of one per pixel (~0.3 ms less per spectrum of 8 x 4096 pixels on a CPU core)."""
    N = math.prod(shape)
    if rate <= 0 or N == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    lam = torch.full((1,), N * rate, dtype=torch.float64, device=device)
    n = int(torch.poisson(lam, generator=generator).item())
    return torch.unique(torch.randint(N, (n,), generator=generator, device=device))


def bad_pixel_mask(B: int, O: int, P: int, rate: float = 1e-3, edge_prob: float = 0.03, generator=None,
                   device="cpu", max_run: int = 8, edge_range: tuple[int, int] = (50, 400)) -> torch.Tensor:
    """Usable-pixel mask (True = usable): (B, O, P) bool.

    Isolated bad pixels at ``rate`` per pixel; short runs (2..max_run px) starting at ``rate / 10``
    per pixel (both :func:`sparse_hits`); and, with probability ``edge_prob`` per order, the first
    or last 50-400 pixels of the order (lost order edges).
    """
    bad = torch.zeros(B * O * P, dtype=torch.bool, device=device)
    bad[sparse_hits((B, O, P), rate, generator, device)] = True
    bad = bad.reshape(B, O, P)
    starts = sparse_hits((B, O, P), rate / 10, generator, device)
    if max_run > 1 and starts.numel():
        length = torch.randint(2, max_run + 1, (starts.numel(),), generator=generator, device=device)
        pixel = starts % P
        for k in range(max_run):
            on = (k < length) & (pixel + k < P)
            bad.view(-1)[starts[on] + k] = True
    if edge_prob > 0:
        edge = torch.rand((B, O, 1), generator=generator, device=device) < edge_prob
        n = torch.randint(edge_range[0], edge_range[1] + 1, (B, O, 1), generator=generator, device=device)
        left_side = torch.rand((B, O, 1), generator=generator, device=device) < 0.5
        pix = torch.arange(P, device=device)
        lost = torch.where(left_side, pix < n, pix >= P - n)
        bad |= edge & lost
    return ~bad


def cosmics(counts: torch.Tensor, rate: float, generator=None) -> torch.Tensor:
    """Add unflagged cosmic-ray hits: pixels hit at ``rate`` per pixel (:func:`sparse_hits`) gain
    0.5-3x their counts."""
    if rate <= 0:
        return counts
    hit = sparse_hits(counts.shape, rate, generator, counts.device)
    amp = _u((hit.numel(),), generator, counts.device, 0.5, 3.0).to(counts.dtype)
    out = counts.clone(memory_format=torch.contiguous_format)
    flat = out.view(-1)
    flat[hit] += amp * flat[hit].abs()
    return out


def median_rows(x: torch.Tensor) -> torch.Tensor:
    """(B,) float64 median of each row of ``x`` (B, N) as numpy takes it (the mean of the two
    middle values of an even count), by one selection (``kthvalue``) in ``x``'s own dtype: the
    middle values are exact there, and a selection is ~10x cheaper than ``torch.quantile``'s sort.
    The upper middle value of an even count is the lower one where that value fills both middle
    places, else the smallest value above it."""
    n = x.shape[1]
    k = (n + 1) // 2
    lo = x.kthvalue(k, dim=1, keepdim=True).values
    if n % 2:
        return lo[:, 0].to(torch.float64)
    above = torch.where(x > lo, x, torch.full((), float("inf"), dtype=x.dtype, device=x.device)).amin(dim=1, keepdim=True)
    hi = torch.where((x <= lo).sum(dim=1, keepdim=True) > k, lo, above)
    return 0.5 * (lo[:, 0].to(torch.float64) + hi[:, 0].to(torch.float64))


def continuum_counts_for_snr(snr: torch.Tensor, read_noise: float = 0.0) -> torch.Tensor:
    """Continuum counts c with c / sqrt(c + read_noise^2) = snr (photon + read noise)."""
    snr = torch.as_tensor(snr, dtype=torch.float64)
    return 0.5 * (snr**2 + snr * torch.sqrt(snr**2 + 4 * read_noise**2))


def counts_scale(continuum: torch.Tensor, snr: torch.Tensor, read_noise: float = 0.0) -> torch.Tensor:
    """(B,) float64 factor k turning a continuum shape into counts at a median continuum S/N.

    Args:
        continuum: (B, ...) the continuum shape (blaze x efficiency, or ones).
        snr: (B,) requested median continuum S/N per pixel; inf or nan gives k = 1 / median(continuum).
    """
    B = continuum.shape[0]
    ref = median_rows(continuum.reshape(B, -1))
    snr = torch.as_tensor(snr, dtype=torch.float64, device=continuum.device).reshape(B)
    finite = torch.isfinite(snr)
    target = torch.where(finite, continuum_counts_for_snr(torch.where(finite, snr, torch.ones_like(snr)), read_noise),
                         torch.ones_like(snr))
    return target / ref


def scale_to_counts(signal: torch.Tensor, continuum: torch.Tensor, snr: torch.Tensor, read_noise: float = 0.0) -> torch.Tensor:
    """Scale a batch to counts so that its median continuum S/N is ``snr`` (:func:`counts_scale`).

    Args:
        signal: (B, ...) flux = continuum shape x normalised spectrum.
        continuum: (B, ...) the continuum shape alone (same shape).
        snr: (B,) requested median continuum S/N per pixel; inf or nan gives k = 1 / median(continuum).
    Returns:
        (B, ...) counts, dtype of ``signal``.
    """
    k = counts_scale(continuum, snr, read_noise).to(signal.dtype)
    return signal * k.reshape(signal.shape[0], *([1] * (signal.dim() - 1)))


def add_noise(counts: torch.Tensor, read_noise: float = 0.0, generator=None) -> torch.Tensor:
    """Gaussian photon + read noise: sigma^2 = max(counts, 0) + read_noise^2."""
    sigma = torch.sqrt(torch.clamp(counts, min=0) + read_noise**2)
    return counts + sigma * torch.randn(counts.shape, generator=generator, device=counts.device, dtype=counts.dtype)


def expose(expected: torch.Tensor, read_noise: float, cosmic_rate: float, generator=None) -> torch.Tensor:
    """What a detector records from expected counts (B, O, P): unflagged cosmic-ray hits
    (:func:`cosmics`), then photon + read noise (:func:`add_noise`), drawn in that order from
    ``generator``. The e2ds simulator and the training sampler both expose with it, so one seed
    gives one file and one training spectrum alike."""
    return add_noise(cosmics(expected, cosmic_rate, generator), read_noise, generator)


def log_uniform(n: int, lo: float, hi: float, generator=None, device="cpu") -> torch.Tensor:
    """(n,) float32 values log-uniform in [lo, hi]."""
    u = torch.rand(n, generator=generator, device=device)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
