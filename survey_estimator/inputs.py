"""THE input builder: native echelle pixels -> the canonical model input, batched in torch.

One code path for real files and training batches. :func:`survey_estimator.preprocess.preprocess`
calls these functions for one observation (the batch-of-one case); the training sampler
(:mod:`survey_estimator.sampling.sampler`) calls them for a whole batch of native-layout counts it
made with the instrument's noise. So edge masks, cosmic masks, the resampling into the canonical
layout (and the variance it carries) and the normalisation are the same code for both.

Steps (each a function):

1. :func:`usable_pixels`: finite, positive flux with a finite positive variance, minus the
   ``edge_pixels`` at each end of every native order;
2. :func:`cosmic_mask`: sharp upward outliers (cosmic-ray hits), dilated by one pixel;
3. :class:`NativeResampler`: each canonical order from the ONE native row nearest to it in
   wavelength (HARPS-N: the row itself, at the observation's rest-frame shift), Keys cubic
   convolution (:mod:`survey_estimator.cubic`), linear next to unusable pixels and at row ends,
   the variance propagated with the squared weights;
4. :func:`build`: the shared normalisation (:func:`survey_estimator.normalise.normalise_orders`)
   and :func:`~survey_estimator.normalise.model_input`.

Shapes: B observations, R native rows, P native pixels per row, O = 8 canonical orders of 4096
pixels. Flux and variance in any unit (counts, counts^2); wavelengths in Angstrom (float64).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import cubic, normalise
from .layout import BAND_MARGIN_A, canonical_wave


@dataclass(frozen=True)
class PreprocessConfig:
    """Tunable choices of the preprocessing (defaults are the versioned behaviour)."""

    target_resolution: float = 115000.0
    rv_source: str = "auto"
    """"auto": header RV if present, else cross-correlation; "ccf": always measure; "none": no
    stellar RV shift (the data are taken as barycentric = rest)."""
    edge_pixels: int = 16
    """Pixels masked at each end of every native echelle order."""
    cosmic_sigma: float = 8.0
    cosmic_fraction: float = 0.1
    """A cosmic must exceed the running median by cosmic_sigma noise sigmas AND by this fraction
    of the local flux level."""
    cosmic_window: int = 9
    low_snr: float = 10.0
    min_order_fraction: float = 0.5
    gap_min_A: float = 2.0
    """A masked run wider than this (A) inside the observed range counts as a gap."""
    margin_A: float = BAND_MARGIN_A
    """Native data within this margin (A) of the canonical range are kept."""


SNAP = 1e-9
"""Fraction of a native pixel within which a target pixel is taken to sit on it."""
LEVEL_WINDOW = 51
"""Pixels of the running median that gives a cosmic's local flux level (with the short one)."""
SHARPNESS = 0.4
"""A cosmic's excess over the mean of its two neighbours is at least this fraction of its excess
over the running median (a resolved peak sampled by >= 3 pixels per FWHM reaches ~25%)."""


def usable_pixels(wave: torch.Tensor, flux: torch.Tensor, variance: torch.Tensor, mask: torch.Tensor,
                  edge_pixels: int = 0) -> torch.Tensor:
    """(B, R, P) bool: ``mask`` and finite positive flux, finite positive variance, finite
    wavelength (``wave`` (B or 1, R, P)), minus ``edge_pixels`` at both ends of every row."""
    inf = float("inf")
    usable = mask & (flux > 0) & (flux < inf) & (variance > 0) & (variance < inf) & normalise.finite(wave)
    if edge_pixels > 0:
        usable[..., :edge_pixels] = False
        usable[..., -edge_pixels:] = False
    return usable


def _filled(flux: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """Flux with unusable pixels linearly interpolated between the usable neighbours of their row
    (held constant beyond the first / last usable pixel): ``np.interp`` per row, batched. Rows
    without a usable pixel keep their flux.

    Only the unusable pixels are visited (a few percent: the order edges, NaN, saturation): each
    finds its neighbours by a search in the sorted flat indices of the usable ones."""
    P = flux.shape[-1]
    good = usable.reshape(-1)
    bad = torch.nonzero(~good).squeeze(1)  # flat indices, sorted
    ok = torch.nonzero(good).squeeze(1)
    if bad.numel() == 0 or ok.numel() == 0:
        return flux
    k = torch.searchsorted(ok, bad)
    prev, nxt = ok[(k - 1).clamp_min(0)], ok[k.clamp_max(ok.numel() - 1)]
    row = bad // P
    prev_ok = (k > 0) & (prev // P == row)
    next_ok = (k < ok.numel()) & (nxt // P == row)
    lo = torch.where(prev_ok, prev, nxt)
    hi = torch.where(next_ok, nxt, prev)
    flat = flux.reshape(-1)
    span = (hi - lo).to(flux.dtype)
    t = torch.where(span > 0, (bad - lo).to(flux.dtype) / span.clamp_min(1), torch.zeros_like(span))
    value = flat[lo] + (flat[hi] - flat[lo]) * t
    value = torch.where(prev_ok | next_ok, value, flat[bad])
    out = flat.clone()
    out[bad] = value
    return out.reshape(flux.shape)


def _window_median(padded: torch.Tensor, where: torch.Tensor, half: int, pad: int) -> torch.Tensor:
    """Median of ``padded[b, r, p + pad - half : p + pad + half + 1]`` at each (b, r, p) of
    ``where`` (n, 3): the running median of width 2 half + 1 (edges replicated), at n pixels."""
    offsets = torch.arange(-half, half + 1, device=padded.device) + pad
    cols = where[:, 2:3] + offsets  # (n, width)
    vals = padded[where[:, 0:1], where[:, 1:2], cols]
    return vals.median(dim=-1).values


def cosmic_mask(flux: torch.Tensor, variance: torch.Tensor, usable: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Upward, sharp outliers per row: (B, R, P) bool, True where a pixel is a cosmic-ray hit
    (dilated by one pixel).

    A hit rises above the running median (``cosmic_window`` pixels) by ``cosmic_sigma`` noise
    sigmas and by ``cosmic_fraction`` of the local level (the larger of that median and a
    :data:`LEVEL_WINDOW`-pixel one), AND is sharper than the line-spread function allows
    (:data:`SHARPNESS`). Unusable pixels are interpolated over first (they are never hits); rows
    with fewer than 3 ``cosmic_window`` usable pixels are skipped.

    The running medians are only evaluated where the cheap sharpness test can pass (a hit's
    excess over its neighbours exceeds SHARPNESS x cosmic_sigma sigmas), a fraction of a percent
    of the pixels: the result is the same as evaluating them everywhere.
    """
    B, R, P = flux.shape
    hit = torch.zeros(flux.shape, dtype=torch.bool, device=flux.device)
    enough = usable.sum(-1, keepdim=True) >= 3 * config.cosmic_window
    if not bool(enough.any()) or P < 3:
        return hit
    filled = _filled(flux, usable)
    sharp = torch.zeros_like(filled)
    sharp[..., 1:-1] = filled[..., 1:-1] - 0.5 * (filled[..., :-2] + filled[..., 2:])
    sigma = torch.sqrt(torch.where(usable, variance, torch.full_like(variance, float("inf"))))
    cand = usable & enough & (sharp > SHARPNESS * config.cosmic_sigma * sigma)
    cand[..., 0] = False
    cand[..., -1] = False
    where = torch.nonzero(cand)  # (n, 3)
    if where.shape[0] == 0:
        return hit
    half_s, half_l = config.cosmic_window // 2, LEVEL_WINDOW // 2
    pad = max(half_s, half_l)
    padded = torch.nn.functional.pad(filled.reshape(B * R, 1, P), (pad, pad), mode="replicate").reshape(B, R, P + 2 * pad)
    med = _window_median(padded, where, half_s, pad)
    level = torch.maximum(med, _window_median(padded, where, half_l, pad))
    b, r, p = where.unbind(1)
    f, s, sd = filled[b, r, p], sharp[b, r, p], sigma[b, r, p]
    excess = f - med
    yes = (excess > config.cosmic_sigma * sd) & (excess > config.cosmic_fraction * level.abs()) & (s > SHARPNESS * excess)
    b, r, p = b[yes], r[yes], p[yes]
    for d in (-1, 0, 1):  # binary dilation by one pixel
        q = p + d
        ok = (q >= 0) & (q < P)
        hit[b[ok], r[ok], q[ok]] = True
    return hit


def nearest_rows(wave: torch.Tensor, target: np.ndarray | None = None) -> torch.Tensor:
    """(B, O) native row whose median wavelength is nearest to each target order's, for
    ``wave`` (B, R, P) (rest-frame) wavelengths."""
    target = canonical_wave() if target is None else target
    if bool(normalise.finite(wave).all()):  # increasing rows: the median is the middle pixel's (torch's lower median)
        centres = wave[..., (wave.shape[-1] - 1) // 2]  # (B, R)
    else:
        centres = torch.nanmedian(wave, dim=-1).values
    t = torch.as_tensor(np.median(target, axis=1), dtype=centres.dtype, device=wave.device)  # (O,)
    return torch.argmin(torch.nan_to_num((centres[:, None, :] - t[None, :, None]).abs(), nan=float("inf")), dim=-1)


def _searchsorted(sorted_rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``torch.searchsorted(sorted_rows, values, right=True)`` for (..., P) rows and (..., P')
    increasing values. On a CPU row by row in numpy, which walks sorted values from the last
    position found (4x faster than torch here)."""
    if sorted_rows.device.type != "cpu":
        return torch.searchsorted(sorted_rows, values, right=True)
    w = sorted_rows.reshape(-1, sorted_rows.shape[-1]).numpy()
    t = values.reshape(-1, values.shape[-1]).numpy()
    out = np.empty(t.shape, dtype=np.int64)
    for i in range(w.shape[0]):
        out[i] = np.searchsorted(w[i], t[i], side="right")
    return torch.from_numpy(out).reshape(values.shape)


class NativeResampler:
    """Native rows -> target orders for a batch, each target order from ONE native row.

    The geometry (which native pixels each target pixel falls between, the cubic and linear
    weights) is computed once per set of wavelengths; :meth:`__call__` applies it to data with
    their usable mask (linear where a cubic tap is unusable, as
    :func:`survey_estimator.layout.resample_to_layout` does).

    Args:
        wave: (B or 1, R, P) float64 rest-frame wavelengths (A) of the native rows, increasing.
        rows: (B or 1, O) native row of each target order (:func:`nearest_rows`).
        target: (O, P') float64 wavelengths to sample (default the canonical layout).
    """

    def __init__(self, wave: torch.Tensor, rows: torch.Tensor, target: np.ndarray | None = None):
        target = canonical_wave() if target is None else np.asarray(target, dtype=np.float64)
        B = max(wave.shape[0], rows.shape[0])  # 1: one geometry for data of any batch size
        O, Pt = target.shape
        P = wave.shape[-1]
        self.rows = rows.expand(B, O)
        w = torch.gather(wave.expand(B, *wave.shape[1:]), 1, self.rows[..., None].expand(B, O, P)).contiguous()  # (B, O, P)
        if bool((w[..., 1:] <= w[..., :-1]).any()):
            raise ValueError("wavelengths must increase along each native row")
        t = torch.as_tensor(np.array(target), dtype=w.dtype, device=w.device).expand(B, O, Pt).contiguous()
        j = (_searchsorted(w, t) - 1).clamp(0, P - 2)
        w0, w1 = torch.gather(w, -1, j), torch.gather(w, -1, j + 1)
        self.inside = (t >= w[..., :1]) & (t <= w[..., -1:])
        a = (t - w0) / (w1 - w0)
        # a target pixel on a native pixel (to SNAP of a pixel: a solution evaluated from header
        # cards differs from the reference one in the last bits) IS that native pixel
        up = (a > 1 - SNAP) & (j + 1 <= P - 2)
        j = j + up
        a = torch.where(up | (a.abs() < SNAP), torch.zeros_like(a), a)
        w0, w1 = torch.gather(w, -1, j), torch.gather(w, -1, j + 1)
        self.on_left, self.on_right = a == 0, a == 1
        jm, jp = (j - 1).clamp_min(0), (j + 2).clamp_max(P - 1)
        dw = w1 - w0
        even = ((w0 - torch.gather(w, -1, jm)) / dw - 1).abs().lt(0.05) & ((torch.gather(w, -1, jp) - w1) / dw - 1).abs().lt(0.05)
        self.interior = (j >= 1) & (j + 2 <= P - 1) & even
        self.neighbours = (j, j + 1)
        self.outer = (jm, jp)
        cub = cubic.weights(a)
        lin = (torch.zeros_like(a), 1 - a, a, torch.zeros_like(a))
        # taps whose weight is zero everywhere (all of the outer two when the target pixels ARE
        # native pixels, as for training spectra) are left out of every call
        active = [k for k in range(4) if bool(cub[k].any() or lin[k].any())]
        self.taps = tuple((jm, j, j + 1, jp)[k] for k in active)
        self.cubic = tuple(cub[k] for k in active)
        self.linear = tuple(lin[k] for k in active)
        self.same_kernel = all(torch.equal(c, l) for c, l in zip(self.cubic, self.linear))
        self.shape = (B, O, Pt)
        # every target pixel IS its native pixel (training spectra on the native pixels): the
        # output is the input where usable, NaN elsewhere, whatever the data
        idx = torch.arange(Pt, device=j.device)
        self.identity = Pt == P and bool((self.inside & ((self.on_left & (j == idx)) | (self.on_right & (j + 1 == idx)))).all())

    def _batch(self, x: torch.Tensor) -> int:
        """Batch size of a call on ``x``: a geometry of batch 1 serves data of any batch."""
        return x.shape[0] if self.shape[0] == 1 else self.shape[0]

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, O, P) the native rows of ``x`` (B or 1, R, P) that feed the target orders."""
        B, O = self._batch(x), self.shape[1]
        return torch.gather(x.expand(B, *x.shape[1:]), 1, self.rows[..., None].expand(B, O, x.shape[-1]))

    def __call__(self, usable: torch.Tensor, flux: torch.Tensor, variance: torch.Tensor | None = None):
        """Resample (flux, variance) with their usable mask (B, R, P).

        Returns:
            (flux, variance or None, mask): (B, O, P') with NaN where the mask is False; True where
            the target pixel lies inside its row and both neighbouring native pixels are usable.
        """
        B = self._batch(flux)
        shape = (B, *self.shape[1:])
        u = self._rows(usable)
        if self.identity:
            def same(x):
                return torch.where(u, self._rows(x), torch.full((), float("nan"), dtype=x.dtype, device=x.device))

            return same(flux), None if variance is None else same(variance), u
        taps = [k.expand(shape) for k in self.taps]
        j, j1 = (torch.gather(u, -1, k.expand(shape)) for k in self.neighbours)
        # a neighbour of weight zero need not be usable: on a native pixel the output is that pixel
        good = self.inside & (j | self.on_right) & (j1 | self.on_left)
        if self.same_kernel:
            weights = self.cubic
        else:
            um, up = (torch.gather(u, -1, k.expand(shape)) for k in self.outer)
            use_cubic = good & self.interior & um & up
            weights = [torch.where(use_cubic, c, lin) for c, lin in zip(self.cubic, self.linear)]
        nan = torch.full((), float("nan"), dtype=flux.dtype, device=flux.device)

        def apply(x, square: bool):
            wts = [w.to(x.dtype) for w in weights]
            xz = torch.where(u, self._rows(x), torch.zeros((), dtype=x.dtype, device=x.device))
            out = torch.zeros(shape, dtype=x.dtype, device=x.device)
            for wk, k in zip(wts, taps):
                out += (wk * wk if square else wk) * torch.gather(xz, -1, k)
            return torch.where(good, out, nan)

        return apply(flux, False), None if variance is None else apply(variance, True), good


def build(flux: torch.Tensor, mask: torch.Tensor, variance: torch.Tensor):
    """The shared normalisation and network input of resampled (B, O, P) flux, mask, variance.

    Returns:
        (x (B, 2, O, P), normalised flux, mask, variance of the normalised flux) as
        :func:`~survey_estimator.normalise.normalise_orders` and ``model_input`` give them.
    """
    norm, mask, var = normalise.normalise_orders(flux, mask, variance)
    return normalise.model_input(norm, mask), norm, mask, var
