"""Keys cubic convolution: the project's one resampling kernel.

Every resampling of a spectrum (fine grid -> layout, native e2ds -> canonical layout, the forward
model's Doppler shift, ``simulate``'s shift into a native layout) uses these weights. Linear
interpolation at a fraction t between two pixels is a two-tap filter of variance t (1 - t) px^2:
it broadens lines by up to 0.5 px (0.4 km/s on HARPS-N) in an amount that depends on the
sub-pixel phase, which a v sin i fit near its Cramer-Rao bound (~0.03 km/s) reads as rotation.
Keys' kernel (a = -1/2; Keys 1981, IEEE Trans. ASSP 29, 1153) reproduces quadratics exactly, so its
second moment about the sampled point vanishes: no such broadening to second order.

Taps at offsets -1, 0, 1, 2 from the lower neighbour; ``t`` in [0, 1) is the fraction from it.
The functions take numpy arrays or torch tensors (any shape) and return four of the same kind.
"""
from __future__ import annotations


def weights(t):
    """Keys (a = -1/2) weights (w_-1, w_0, w_1, w_2) at fraction ``t``; they sum to 1.

    Factored forms (``w_-1 = -t (t-1)^2 / 2``, ``w_2 = t^2 (t-1) / 2``, ``w_1 = 1 - the others``):
    14 array operations instead of 18 (the forward model evaluates them at every pixel of every
    fit iteration)."""
    t2 = t * t
    s = t - 1
    wm = (-0.5 * t) * (s * s)
    w2 = (0.5 * s) * t2
    w0 = (1.5 * t - 2.5) * t2 + 1
    return (wm, w0, 1 - (wm + w2) - w0, w2)


def derivatives(t):
    """d weights / d t, same order as :func:`weights`; they sum to 0."""
    s = t - 1
    dm = (-1.5 * t + 0.5) * s
    d2 = (1.5 * t - 1) * t
    d0 = (4.5 * t - 5) * t
    return (dm, d0, -(dm + d2) - d0, d2)


__all__ = ["weights", "derivatives"]
