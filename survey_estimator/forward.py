"""THE forward model: labels + nuisances -> the expected (continuum-normalised) observation.

Every synthetic spectrum of the project that a fit or a bound sees comes from here: the likelihood
fit (:mod:`survey_estimator.fit`), the Cramer-Rao bound and the training sampler all render with
:class:`ForwardModel`.

Physics, in order (the grid holds PySME spectra at v sin i = 0, vmac = 0, R = 115,000):

1. macroturbulence: Gray's radial-tangential kernel, width from a Teff / log g relation
   (:mod:`.sampling.macroturbulence`), applied per grid node;
2. rotation: Gray's kernel (limb darkening 0.6) at the v sin i nodes 0, 2, ..., 30 km/s;
3. resampling into the canonical HARPS-N layout, extended by ``pad`` pixels at each order end;

Steps 1-3 are precomputed once per grid into a 4D table (node x v sin i x order x pixel) and
cached on disk. Rendering is then

4. multilinear interpolation in (Teff, log g, [M/H], v sin i^2) over the 16 corners of a cell (its
   derivatives with respect to the four labels come from the same corners, exactly);
5. an optional Gaussian degradation to a lower resolving power (the MODEL is degraded to the
   observation's R, never the data sharpened);
6. a Doppler shift by the radial-velocity residual (Keys cubic convolution along the pixels, whose
   velocity step is ~0.8 km/s: :mod:`.cubic`), with its derivative.

The per-order continuum is the fit's linear nuisance (:mod:`survey_estimator.fit`).

Shapes: B spectra, O = 8 orders, P = 4096 pixels, V v sin i nodes; labels (B, 4) in physical
units (K, dex, dex, km/s); the Jacobian (B, 5, O, P) is with respect to (Teff, log g, [M/H],
v sin i, RV) in those units and km/s.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import cubic
from .labels import LABEL_NAMES, VSINI
from .layout import C_KMS, LAYOUT_VERSION, canonical_wave
from .sampling import macroturbulence
from .sampling.interpolation import GridInterpolator
from .sampling.resample import LayoutResampler
from .sampling.rotation import LIMB_DARKENING, convolve_same, rotational_broadening

log = logging.getLogger(__name__)

FORWARD_VERSION = "fwd-v3"
"""Identifier of the forward model (table and interpolation); recorded with fit results."""
TABLE_VERSION = "fwd-v2"
"""Identifier of the precomputed table's physics (steps 1-3); part of its cache key."""
NUISANCES = ("rv",)
"""Non-linear nuisances fitted with the labels (the continuum is solved linearly)."""
PARAMS = (*LABEL_NAMES, *NUISANCES)
"""The non-linear parameters, in Jacobian order."""


@dataclass(frozen=True)
class ForwardConfig:
    """Settings of the forward model (they change the spectra, so they key the table cache).

    Attributes:
        vsini_nodes: v sin i values (km/s) precomputed for interpolation.
        macroturbulence: broaden each node by the RT kernel of :func:`.macroturbulence.vmac_relation`.
        epsilon: limb darkening of the rotational kernel.
        pad: pixels added at each end of every order so RV shifts of up to ``pad * 0.8`` km/s
            (~78 km/s) stay inside the table (the fit's RV residual; ``simulate``'s RV - BERV).
        resolution: the grid's resolving power (the table's).
    """

    vsini_nodes: tuple[float, ...] = tuple(float(v) for v in VSINI.values)
    macroturbulence: bool = True
    epsilon: float = LIMB_DARKENING
    pad: int = 96
    resolution: float = 115_000.0

    def key(self, grid_id: str) -> str:
        blob = json.dumps({"grid": grid_id, "v": TABLE_VERSION, "layout": LAYOUT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def describe(self) -> dict:
        return {"version": FORWARD_VERSION, **asdict(self),
                "macroturbulence_relation": macroturbulence.RELATION if self.macroturbulence else None}


def extended_wave(pad: int) -> np.ndarray:
    """Canonical wavelengths extended by ``pad`` pixels at both ends of each order, (O, P + 2 pad)."""
    cw = canonical_wave()
    x = np.arange(cw.shape[1], dtype=np.float64)
    xe = np.arange(-pad, cw.shape[1] + pad, dtype=np.float64)
    out = np.empty((cw.shape[0], xe.size))
    for o, w in enumerate(cw):
        c = np.polynomial.polynomial.polyfit(x / 4096.0, w, 3)  # the DRS solution is a cubic in x
        out[o] = np.polynomial.polynomial.polyval(xe / 4096.0, c)
    return out


def _cache_root() -> Path:
    from .synth.sources import cache_dir

    return Path(cache_dir()) / "forward"


def broaden(flux: torch.Tensor, labels: np.ndarray, vsini: torch.Tensor, step: float, config: ForwardConfig) -> torch.Tensor:
    """Steps 1-2 on fine-grid spectra: macroturbulence (width from each spectrum's Teff and log g)
    then rotation.

    Args:
        flux: (B, L) fine-grid spectra at v sin i = 0, vmac = 0.
        labels: (B, >=2) their Teff (K) and log g (dex).
        vsini: (B,) km/s.
        step: the fine grid's velocity step (km/s).
    Returns:
        (B, L) broadened spectra, dtype of ``flux``.
    """
    if config.macroturbulence:
        zeta = macroturbulence.vmac_relation(labels[:, 0], labels[:, 1])
        kernels = [macroturbulence.rt_kernel(float(z), step) for z in zeta]
        K = max(k.numel() for k in kernels) // 2
        flux = convolve_same(flux, torch.stack([torch.nn.functional.pad(k, (K - k.numel() // 2,) * 2) for k in kernels]))
    return rotational_broadening(flux, vsini.to(flux.dtype), step, config.epsilon,
                                 vsini_max=max(float(max(config.vsini_nodes)), float(vsini.max())))


def build_table(rows: torch.Tensor, row_labels: np.ndarray, wave: np.ndarray, config: ForwardConfig,
                batch: int = 16, progress: bool = False) -> torch.Tensor:
    """Precompute steps 1-3 (:func:`broaden`, then resampling) for every grid row at every v sin i node.

    Args:
        rows: (R, L) fine-grid spectra at v sin i = 0 (continuum-normalised).
        row_labels: (R, 3) the (Teff, log g, [M/H]) of each row (macroturbulence depends on them).
        wave: (L,) fine-grid wavelengths (A), log-uniform.
    Returns:
        (R, V, O, P + 2 pad) float32 table on the CPU.
    """
    from tqdm.auto import tqdm

    target = extended_wave(config.pad)
    resampler = LayoutResampler(wave, target)
    step = C_KMS * float(np.mean(np.diff(np.log(wave))))
    vs = torch.as_tensor(config.vsini_nodes, dtype=torch.float64)
    R, V = rows.shape[0], vs.numel()
    out = torch.empty((R, V, *target.shape), dtype=torch.float32)
    for start in tqdm(range(0, R, batch), desc="forward table", unit="batch", disable=not progress, mininterval=5.0):
        flux = rows[start : start + batch].to(torch.float64).cpu()
        b = flux.shape[0]
        labels = np.repeat(row_labels[start : start + b], V, axis=0)
        rot = broaden(flux.repeat_interleave(V, dim=0), labels, vs.repeat(b), step, config)
        out[start : start + b] = resampler(rot).reshape(b, V, *target.shape).to(torch.float32)
    return out


def row_labels_of(index_map: np.ndarray, axes, n_rows: int) -> np.ndarray:
    """(n_rows, 3) node labels of the rows an index map points at (NaN for rows it does not use)."""
    out = np.full((n_rows, 3), np.nan)
    idx = np.argwhere(index_map >= 0)
    rows = index_map[index_map >= 0]
    for a in range(3):
        out[rows, a] = np.asarray(axes[a])[idx[:, a]]
    return out


def _nearest_filled(index_map: np.ndarray) -> np.ndarray:
    """The index map with every missing node pointing at its nearest node that has a spectrum, so
    that rendering is defined everywhere inside the axes (:meth:`ForwardModel.inside` says where
    it is a real interpolation)."""
    from scipy.ndimage import distance_transform_edt

    missing = index_map < 0
    if not missing.any():
        return index_map
    _, nearest = distance_transform_edt(missing, return_distances=True, return_indices=True)
    return index_map[tuple(nearest)]


class ForwardModel:
    """Noiseless spectra and their Jacobian at continuous labels (see the module docstring).

    Args:
        table: (R, V, O, P + 2 pad) float tensor from :func:`build_table`.
        index_map: (nT, nG, nM) row of each node, -1 where the grid has no spectrum.
        axes: the node values of (Teff, log g, [M/H]).
        config: the :class:`ForwardConfig` the table was built with.
        grid_id: provenance.
    """

    def __init__(self, table: torch.Tensor, index_map, axes, config: ForwardConfig, grid_id: str = "",
                 interpolator: GridInterpolator | None = None):
        self.table = table
        self.interpolator = interpolator
        """The grid's fine rows, for :meth:`observed` (None when only the table was given)."""
        self.device = table.device
        self.config = config
        self.grid_id = grid_id
        self.index_map = torch.as_tensor(np.asarray(index_map), dtype=torch.long, device=self.device)
        self._render_map = torch.as_tensor(_nearest_filled(np.asarray(index_map)), dtype=torch.long, device=self.device)
        self.axes = tuple(np.asarray(a, dtype=np.float64) for a in axes) + (np.asarray(config.vsini_nodes, dtype=np.float64),)
        self._axes_t = [torch.as_tensor(a, dtype=torch.float64, device=self.device) for a in self.axes]
        self.lo = np.array([a[0] for a in self.axes])
        self.hi = np.array([a[-1] for a in self.axes])
        """(4,) label bounds of the model (K, dex, dex, km/s)."""
        pad = config.pad
        wext = extended_wave(pad)
        dlnw = np.gradient(np.log(wext), axis=1)[:, pad:-pad]  # (O, P) d ln(lambda) / d pixel
        self._px_per_kms = torch.as_tensor(1.0 / (C_KMS * dlnw), dtype=table.dtype, device=self.device)
        self.velocity_step = float(np.median(C_KMS * dlnw))
        """Median canonical pixel step in km/s."""
        self.shape = (wext.shape[0], wext.shape[1] - 2 * pad)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_interpolator(cls, interp: GridInterpolator, config: ForwardConfig | None = None,
                          row_labels: np.ndarray | None = None, cache: bool = True, progress: bool = True) -> "ForwardModel":
        """Build (or load from the cache) the table for every row of a grid view.

        ``row_labels`` (R, 3) gives the labels of rows the view's index map does not point at (a
        sampler's training fills); the table of the grid's own rows is cached under
        ``<cache>/forward/`` keyed by the grid id, ``config`` and the set of nodes.
        """
        config = config or ForwardConfig()
        index_map = interp.index_map.cpu().numpy()
        labels = row_labels if row_labels is not None else row_labels_of(index_map, interp.axes, interp.rows.shape[0])
        n_own = int((index_map >= 0).sum())
        own = np.arange(interp.rows.shape[0]) < n_own
        nodes = hashlib.sha256(np.ascontiguousarray(index_map[..., None] >= 0).tobytes()
                               + json.dumps([list(map(float, a)) for a in interp.axes]).encode()).hexdigest()[:8]
        path = _cache_root() / f"{interp.grid_id}-{config.key(interp.grid_id)}-{nodes}.npy" if cache and interp.grid_id else None
        table = None
        if path is not None and path.exists():
            arr = np.load(path, mmap_mode="r")
            if arr.shape[0] == n_own:
                table = torch.from_numpy(np.asarray(arr, dtype=np.float32))
                log.info("forward table of grid %s loaded from %s", interp.grid_id, path)
        if table is None:
            log.info("building the forward table of grid %s: %d nodes x %d v sin i", interp.grid_id, n_own,
                     len(config.vsini_nodes))
            table = build_table(interp.rows[:n_own], labels[:n_own], interp.wave, config, progress=progress)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
                np.save(tmp, table.numpy().astype(np.float16))
                os.replace(tmp, path)
                table = torch.from_numpy(np.load(path).astype(np.float32))  # what later runs will load
        if (~own).any():
            extra = build_table(interp.rows[n_own:], labels[n_own:], interp.wave, config)
            table = torch.cat([table, extra])
        return cls(table.to(interp.device), index_map, interp.axes, config, interp.grid_id, interp)

    @classmethod
    def from_grid(cls, grid, device: str = "cpu", config: ForwardConfig | None = None, cache: bool = True,
                  progress: bool = True) -> "ForwardModel":
        """The forward model of a grid store URI, packed ``.npz``, :class:`~.synth.store.GridStore`
        or DenseGrid (:func:`~.synth.store.open_grid`)."""
        from .synth.store import open_grid

        interp = GridInterpolator.from_dense(open_grid(grid), device=device)
        return cls.from_interpolator(interp, config, cache=cache, progress=progress)

    def with_index_map(self, index_map) -> "ForwardModel":
        """Another view of the same table (e.g. a split's training view)."""
        interp = self.interpolator.with_index_map(index_map) if self.interpolator is not None else None
        return ForwardModel(self.table, np.asarray(torch.as_tensor(index_map).cpu()), self.axes[:3], self.config, self.grid_id, interp)

    # -- geometry ---------------------------------------------------------------------------------
    def clamp(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels (B, 4) held inside the model's bounds."""
        lo = torch.as_tensor(self.lo, dtype=labels.dtype, device=labels.device)
        hi = torch.as_tensor(self.hi, dtype=labels.dtype, device=labels.device)
        return torch.maximum(torch.minimum(labels, hi), lo)

    def _cells(self, labels: torch.Tensor):
        """Lower node index (B, 4), fraction (B, 4) of each label inside its cell (clamped) and
        d fraction / d label (B, 4).

        Along v sin i the fraction is taken in v sin i^2: a line's width grows in quadrature with
        v sin i, so the spectrum is closer to linear in v sin i^2 (measured on the fgk-dwarfs table
        against exact broadening: noiseless fits off by 0.094 km/s rms in v sin i when linear in
        v sin i, see docs/fit.md), and its derivative vanishes at v sin i = 0 as it should."""
        x = torch.as_tensor(labels, dtype=torch.float64, device=self.device).reshape(-1, 4)
        lower, frac, dfrac = [], [], []
        for a, ax in enumerate(self._axes_t):
            if len(ax) == 1:
                lower.append(torch.zeros(x.shape[0], dtype=torch.long, device=self.device))
                frac.append(torch.zeros(x.shape[0], dtype=torch.float64, device=self.device))
                dfrac.append(torch.zeros(x.shape[0], dtype=torch.float64, device=self.device))
                continue
            xa = x[:, a].clamp(ax[0], ax[-1]).contiguous()
            i0 = torch.clamp(torch.searchsorted(ax, xa, right=True) - 1, 0, len(ax) - 2)
            lower.append(i0)
            if a == 3:
                span = ax[i0 + 1] ** 2 - ax[i0] ** 2
                frac.append((xa**2 - ax[i0] ** 2) / span)
                dfrac.append(2 * xa / span)
            else:
                frac.append((xa - ax[i0]) / (ax[i0 + 1] - ax[i0]))
                dfrac.append(1.0 / (ax[i0 + 1] - ax[i0]))
        return torch.stack(lower, 1), torch.stack(frac, 1), torch.stack(dfrac, 1)

    def inside(self, labels: torch.Tensor) -> torch.Tensor:
        """(B,) bool: inside the bounds and every node corner with weight > 0 has a spectrum."""
        x = torch.as_tensor(labels, dtype=torch.float64, device=self.device).reshape(-1, 4)
        lo = torch.as_tensor(self.lo, device=self.device)
        hi = torch.as_tensor(self.hi, device=self.device)
        ok = ((x >= lo - 1e-9) & (x <= hi + 1e-9)).all(dim=1)
        lower, frac, _ = self._cells(x)
        for c in range(8):
            bits = [(c >> (2 - a)) & 1 for a in range(3)]
            w = torch.ones(x.shape[0], dtype=torch.float64, device=self.device)
            idx = []
            for a, bit in enumerate(bits):
                n = len(self.axes[a])
                w = w * (frac[:, a] if bit else 1 - frac[:, a])
                idx.append((lower[:, a] + bit).clamp(max=n - 1))
            ok &= (w <= 0) | (self.index_map[idx[0], idx[1], idx[2]] >= 0)
        return ok

    # -- rendering --------------------------------------------------------------------------------
    def _interpolate(self, labels: torch.Tensor, jacobian: bool):
        """(B, C, O, Pext) table interpolation: channel 0 the spectrum and, with ``jacobian``,
        channels 1-4 its derivatives w.r.t. the four labels (exact for multilinear weights).

        The 16 corners are gathered once and combined by one batched matrix product."""
        lower, frac, dfrac = self._cells(labels)
        B = lower.shape[0]
        bits = torch.tensor([[(c >> (3 - a)) & 1 for a in range(4)] for c in range(16)], device=self.device)  # (16, 4)
        n = torch.tensor([len(a) for a in self.axes], device=self.device)
        idx = torch.minimum(lower[:, None, :] + bits[None], n - 1)  # (B, 16, 4)
        fac = torch.where(bits[None].bool(), frac[:, None, :], 1 - frac[:, None, :])  # (B, 16, 4)
        weights = [fac.prod(dim=2)]  # (B, 16)
        if jacobian:
            for a in range(4):
                d = torch.where(bits[None, :, a].bool(), dfrac[:, a, None], -dfrac[:, a, None])  # (B, 16)
                others = torch.cat([fac[:, :, :a], fac[:, :, a + 1 :]], dim=2).prod(dim=2)
                weights.append(d * others)
        W = torch.stack(weights, dim=1).to(self.table.dtype)  # (B, C, 16)
        flat = self.table.reshape(-1, self.table.shape[2] * self.table.shape[3])  # (R V, O Pext)
        rows = self._render_map[idx[..., 0], idx[..., 1], idx[..., 2]] * self.table.shape[1] + idx[..., 3]  # (B, 16)
        if jacobian:  # one gather, one batched product (measured faster than 16 accumulations)
            out = torch.bmm(W, flat.index_select(0, rows.reshape(-1)).reshape(B, 16, -1))
        else:  # 16 accumulations: never holds the (B, 16, O Pext) corner stack
            out = torch.zeros((B, flat.shape[1]), dtype=flat.dtype, device=self.device)
            for k in range(16):
                out.addcmul_(W[:, 0, k : k + 1], flat.index_select(0, rows[:, k]))
        return out.reshape(B, W.shape[1], *self.table.shape[2:])

    def _degrade(self, spec: torch.Tensor, resolution: float) -> torch.Tensor:
        """Gaussian convolution along pixels from the table's R to ``resolution`` (..., O, Pext)."""
        fwhm = C_KMS * np.sqrt(max(1.0 / resolution**2 - 1.0 / self.config.resolution**2, 0.0))
        sigma_px = fwhm / 2.3548 / self.velocity_step
        if sigma_px < 0.1:
            return spec
        K = int(np.ceil(4 * sigma_px))
        k = torch.exp(-0.5 * (torch.arange(-K, K + 1, dtype=spec.dtype, device=spec.device) / sigma_px) ** 2)
        k = (k / k.sum())[None, None]
        flat = spec.reshape(-1, 1, spec.shape[-1])
        flat = torch.nn.functional.conv1d(torch.nn.functional.pad(flat, (K, K), mode="replicate"), k)
        return flat.reshape(spec.shape)

    def _shift(self, spec: torch.Tensor, rv: torch.Tensor, with_derivative: bool):
        """Sample (B, C, O, Pext) at the canonical pixels Doppler-shifted by ``rv`` (B,) km/s.

        Returns (B, C, O, P) and, if asked, d/d rv of channel 0 (B, O, P) per km/s.

        Order by order: the offsets, fractions, cubic weights and taps of one order of a small
        batch stay in the CPU's cache (measured 2.2x faster than whole-batch arrays); the offsets
        are float32 (|t| < pad px, so 1e-6 px)."""
        pad = self.config.pad
        B, C, O, Pe = spec.shape
        P = Pe - 2 * pad
        x = torch.arange(P, device=self.device) + (pad - 1)  # tap -1 of pixel i sits at i + pad - 1 + floor(t)
        # a pixel at rest wavelength lambda sees the table at lambda / D(rv): u = x + t with the
        # offset t = -ln D(rv) / dlnw = c(rv) * (pixels per km/s), so floor(u) = x + floor(t) and
        # the fraction is t - floor(t)
        b = rv.to(torch.float64) / C_KMS
        c = (-0.5 * (torch.log1p(b) - torch.log1p(-b)) * C_KMS).to(spec.dtype)  # (B,) km/s
        ppk = self._px_per_kms.to(spec.dtype)
        reach = torch.floor(c[:, None] * torch.stack([ppk.min(), ppk.max()])[None])  # t is monotonic in ppk
        if float(reach.min()) < 1 - pad or float(reach.max()) > pad - 2:
            raise ValueError(f"RV residual beyond the forward model's margin of {pad} px")
        out = torch.empty((B, C, O, P), dtype=spec.dtype, device=spec.device)
        tap = torch.empty((B, C, P), dtype=spec.dtype, device=spec.device)
        deriv = torch.zeros((B, O, P), dtype=spec.dtype, device=spec.device) if with_derivative else None
        for o in range(O):
            t = c[:, None] * ppk[o][None]  # (B, P) table pixels
            floor_t = torch.floor(t)
            a = (t - floor_t)[:, None]  # (B, 1, P)
            ix = (floor_t.long() + x)[:, None].expand(B, C, P)  # a view: no copy of the index per channel
            weights = cubic.weights(a)
            derivs = cubic.derivatives(a[:, 0]) if with_derivative else None
            rows, acc = spec[:, :, o], out[:, :, o]
            # tap k (offset k - 1) is read through a view of the pixels shifted by k and accumulated
            for k in range(4):
                torch.gather(rows[..., k : k + Pe - 3], 2, ix, out=tap)
                if with_derivative:
                    deriv[:, o].addcmul_(tap[:, 0], derivs[k])
                if k == 0:
                    torch.mul(tap, weights[0], out=acc)
                else:
                    acc.addcmul_(tap, weights[k])
        if with_derivative:  # d/d rv = d/du * du/d rv, du/d rv = -pixels per km/s
            deriv.mul_(-ppk[None])
        return out, deriv

    def spectra(self, labels: torch.Tensor, rv: torch.Tensor | float = 0.0, resolution: float | None = None) -> torch.Tensor:
        """(B, O, P) noiseless continuum-normalised spectra at ``labels`` (B, 4), RV ``rv`` (B,) km/s."""
        return self._render(labels, rv, resolution, jacobian=False)[0]

    def spectra_and_jacobian(self, labels: torch.Tensor, rv: torch.Tensor | float = 0.0,
                             resolution: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(spectra (B, O, P), Jacobian (B, 5, O, P) w.r.t. Teff, log g, [M/H], v sin i, RV)."""
        return self._render(labels, rv, resolution, jacobian=True)

    CHUNK = {False: 16, True: 8}
    """Spectra rendered at once on a CPU (measured: the 16 corner rows of a few spectra stay in
    cache; at batch 256 the value path is 5x and the Jacobian path 2.5x slower per spectrum)."""

    def _render(self, labels, rv, resolution, jacobian: bool):
        labels = torch.as_tensor(labels, dtype=torch.float64, device=self.device).reshape(-1, 4)
        B = labels.shape[0]
        rv = torch.as_tensor(rv, dtype=torch.float64, device=self.device).reshape(-1).expand(B)
        chunk = self.CHUNK[jacobian] if self.device.type == "cpu" else B
        if B > chunk:
            parts = [self._render(labels[i : i + chunk], rv[i : i + chunk], resolution, jacobian) for i in range(0, B, chunk)]
            return torch.cat([p[0] for p in parts]), (torch.cat([p[1] for p in parts]) if jacobian else None)
        stack = self._interpolate(labels, jacobian)  # (B, C, O, Pext)
        if resolution is not None and resolution < self.config.resolution * 0.99:
            stack = self._degrade(stack, float(resolution))
        out, drv = self._shift(stack, rv, jacobian)
        if not jacobian:
            return out[:, 0], None
        return out[:, 0], torch.cat([out[:, 1:], drv[:, None]], dim=1)

    def observed(self, labels: torch.Tensor, factor: torch.Tensor, target: np.ndarray) -> torch.Tensor:
        """The model at any Doppler shift in an 8-order layout: what ``simulate`` writes into a
        native e2ds.

        Within the table's margin (``pad`` pixels, ~78 km/s) the table itself is interpolated at
        ``labels`` and resampled, order by order, to ``target / factor``: the very spectra the fit
        and the sampler see. Beyond it (or with another number of orders) the same physics is
        computed from the fine grid (:func:`broaden` at the exact labels), which differs from the
        table by its interpolation between nodes (``bench/forward_fit.py`` measures it).

        Args:
            labels: (B, 4); factor: (B,) Doppler factors lambda_obs / lambda_rest;
            target: (O, P) observed wavelengths (A).
        Returns:
            (B, O, P) float64 continuum-normalised spectra.
        Raises:
            OutsideGridError: labels outside the grid (or needing a node without a spectrum).
        """
        labels = torch.as_tensor(labels, dtype=torch.float64, device=self.device).reshape(-1, 4)
        bad = ~self.inside(labels)
        if bad.any():
            from .sampling.interpolation import OutsideGridError

            raise OutsideGridError(f"labels {labels[bad][0].tolist()} are outside the grid "
                                   f"{self.describe()['bounds']} or need a node without a spectrum")
        factor = torch.as_tensor(factor, dtype=torch.float64).reshape(-1).expand(labels.shape[0]).cpu().numpy()
        target = np.asarray(target, dtype=np.float64)
        wext = extended_wave(self.config.pad)
        rest = target[None] / factor[:, None, None]  # (B, O, P) rest wavelengths sampled
        inside = target.shape[0] == wext.shape[0] and bool(
            np.all(rest.min(axis=2) > wext[None, :, 2]) and np.all(rest.max(axis=2) < wext[None, :, -3]))
        if inside:
            spec = torch.cat([self._interpolate(labels[i : i + 16], False)[:, 0] for i in range(0, len(labels), 16)])
            spec = spec.double().cpu().numpy()
            out = np.empty(rest.shape)
            px = np.arange(wext.shape[1], dtype=np.float64)
            for o in range(rest.shape[1]):
                u = np.interp(rest[:, o], wext[o], px)  # (B, P) fractional table pixel
                i0 = np.floor(u).astype(np.int64)
                w = cubic.weights(u - i0)
                out[:, o] = sum(wk * np.take_along_axis(spec[:, o], i0 + k, axis=1) for k, wk in zip(range(-1, 3), w))
            return torch.as_tensor(out, device=self.device)
        log.info("rendering beyond the table's margin from the fine grid (exact broadening)")
        return self.exact(labels, factor, target)

    def exact(self, labels: torch.Tensor, factor, target: np.ndarray) -> torch.Tensor:
        """The same physics computed from the fine grid instead of the table: the nodes' fine
        spectra interpolated at ``labels`` (B, 4), broadened exactly at them (:func:`broaden`)
        and resampled to ``target / factor`` (O, P). Differs from the table by its interpolation
        between the v sin i nodes and of the broadening kernels between label nodes."""
        if self.interpolator is None:
            raise ValueError("this forward model holds only its table: build it from a grid to render other layouts")
        labels = torch.as_tensor(labels, dtype=torch.float64, device=self.device).reshape(-1, 4)
        factor = torch.as_tensor(factor, dtype=torch.float64).reshape(-1).expand(labels.shape[0])
        flux = self.interpolator.interpolate(labels).to(torch.float64)
        spec = broaden(flux, labels.cpu().numpy(), labels[:, 3], self.interpolator.velocity_step, self.config)
        return LayoutResampler(self.interpolator.wave, np.asarray(target, dtype=np.float64), device=self.device)(spec, factor)

    def describe(self) -> dict:
        """JSON-ready description (provenance of fits made with this model)."""
        return {"grid_id": self.grid_id, **self.config.describe(),
                "bounds": {n: [float(lo), float(hi)] for n, lo, hi in zip(LABEL_NAMES, self.lo, self.hi)}}

