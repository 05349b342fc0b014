"""The training-time sampler: batches of realistic synthetic spectra with their labels.

One batch (:meth:`Sampler.sample`) is made in torch on one device, all steps batched:

1. labels: uniform over the sampleable cells of the split's grid view (train), or at the
   held-out nodes (val / test; see :mod:`.splits`); v sin i uniform in ``vsini_range``;
2-3. THE forward model (:class:`survey_estimator.forward.ForwardModel`: macroturbulence, rotation,
   interpolation in the four labels, RV residual) in the canonical (8, 4096) layout, the same
   physics the likelihood fit and the Cramer-Rao bound use;
4. per-order shapes: the seed's linear slant times blaze-like curves (``blaze=True``);
5. counts at a log-uniform S/N from ``snr_range``, exposed as the e2ds simulator exposes a file
   (:func:`.nuisance.expose`: unflagged cosmics, photon + the instrument record's read noise;
   :mod:`.nuisance` defines S/N), bad-pixel masks; the variance a reader estimates from the
   counts (:func:`survey_estimator.instruments.noise.count_variance`);
6. THE input builder of real files (:mod:`survey_estimator.inputs`, with
   :class:`~survey_estimator.inputs.PreprocessConfig` defaults): usable pixels and the native
   order-edge masks, the cosmic-ray filter, the native-row resampling (here of spectra already in
   the HARPS-N rows, at rest: the RV residual is in the forward model's spectrum), the shared
   normalisation and ``model_input`` (with the variance of the normalised flux, the fit's noise).
   A ``simulate``d e2ds read and built by ``preprocess`` is the same spectrum, masks included
   (``tests/test_forward_fit.py``).

The DAE target ``clean`` is the same spectrum (same labels and RV) without shapes, noise or bad
pixels, through the same normalisation, with a full mask (only when asked: ``clean=True``, the
default; training without a DAE skips it, half the normalisation's cost).

On a CPU, steps 4-6 run over chunks of :data:`CHUNK` spectra so that each chunk stays in cache
through the dozens of passes they make over it (2-3x faster per spectrum than a batch of 256 at
once); the draws of a chunk come from the one generator in chunk order, so a batch is still
reproducible from its generator.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .. import inputs
from ..instruments.noise import count_variance
from ..instruments.registry import lookup
from ..labels import VSINI
from ..layout import canonical_wave
from ..normalise import model_input, normalise_orders
from ..synth.store import DenseGrid, GridStore, open_grid
from . import nuisance
from .interpolation import GridInterpolator, dense_rows
from .rotation import LIMB_DARKENING
from .splits import SPLITS, NodeSplit, split_nodes, training_fills

log = logging.getLogger(__name__)

CHUNK = 16
"""Spectra observed (steps 4-6) at once on a CPU; a GPU takes the whole batch."""


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of the sampler.

    Attributes:
        snr_range: (lo, hi) median continuum S/N per pixel, drawn log-uniform.
        noiseless: no noise (S/N reported as inf); shapes and masks still apply.
        blaze: apply per-order slant and blaze-like shapes.
        rv_range: (lo, hi) km/s, uniform: residual RV after the rest-frame correction.
        vsini_range: (lo, hi) km/s, uniform.
        bad_pixel_rate: isolated bad pixels per pixel (runs start at a tenth of it).
        edge_mask_prob: probability per order of losing a 50-400 px order edge.
        cosmic_rate: unflagged cosmic hits per pixel (masked by the input builder's filter).
        read_noise: read-out noise (e-) per pixel; default the HARPS-N record's.
        max_slant: largest |slope| of the linear slant across an order.
        val_fraction, test_fraction: fractions of the nodes held out (:mod:`.splits`).
        holdout: False puts every node in training (no validation / test nodes).
        epsilon: limb darkening of the rotational kernel.
        seed: seeds the default generator (give each data-parallel worker its own).
        split_seed: seeds the node split (None: ``seed``); keep it the same for every worker and
            run that must agree on which nodes are held out, whatever their generator seeds.
        device: torch device of the grid and the batches.
        dtype: 'float32' (default) or 'float64'.
    """

    snr_range: tuple[float, float] = (20.0, 300.0)
    noiseless: bool = False
    blaze: bool = True
    rv_range: tuple[float, float] = (-3.0, 3.0)
    vsini_range: tuple[float, float] = (VSINI.start, VSINI.stop)
    bad_pixel_rate: float = 1e-3
    edge_mask_prob: float = 0.03
    cosmic_rate: float = 2e-5
    read_noise: float = lookup("HARPS-N").read_noise_e
    max_slant: float = 0.3
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    holdout: bool = True
    epsilon: float = LIMB_DARKENING
    seed: int = 0
    split_seed: int | None = None
    device: str = "cpu"
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Batch:
    """One batch (all tensors on the sampler's device).

    Attributes:
        x: (B, 2, 8, 4096) model input (normalised flux - 1, mask).
        labels: (B, 4) physical labels (Teff K, log g, [M/H], v sin i km/s), float32.
        clean: (B, 2, 8, 4096) the noiseless, shape-free, unmasked target (for the DAE); None
            when the batch was drawn with ``clean=False``.
        snr: (B,) median continuum S/N per pixel (inf when noiseless).
        rv: (B,) km/s RV applied.
        mask: (B, 8, 4096) bool usable pixels of ``x``.
        variance: (B, 8, 4096) variance of the normalised flux ``x[:, 0] + 1`` (inf where masked).
    """

    x: torch.Tensor
    labels: torch.Tensor
    clean: torch.Tensor | None
    snr: torch.Tensor
    rv: torch.Tensor
    mask: torch.Tensor
    variance: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(**{k: None if v is None else v.to(device) for k, v in self.__dict__.items()})


def build_views(grid: DenseGrid, split: NodeSplit | None, device="cpu", dtype=torch.float32) -> tuple[GridInterpolator, GridInterpolator]:
    """(full view, training view) of a grid sharing one tensor of rows on ``device``.

    The rows are the valid nodes followed by the training fills of the held-out nodes; the
    training view's index map points held-out nodes at their fills, so no training sample can
    read a held-out spectrum.
    """
    rows, index_map = dense_rows(grid)
    train_map = index_map.copy()
    if split is not None and len(split.held_out):
        held, fills = training_fills(lambda i, j, k: rows[index_map[i, j, k]], grid.valid, split)
        train_map[tuple(held.T)] = rows.shape[0] + np.arange(len(held))
        rows = np.concatenate([rows, fills])
    full = GridInterpolator(torch.as_tensor(rows, dtype=dtype).to(device), torch.as_tensor(index_map), grid.axes,
                            grid.wave, grid.grid_id)
    return full, full.with_index_map(train_map)


class Sampler:
    """Synthetic training batches from a grid (see the module docstring).

    Args:
        grid: a :class:`DenseGrid`, a :class:`GridStore`, a store URI or a packed ``.npz`` (:func:`open_grid`).
        config: :class:`SamplerConfig`.
    """

    def __init__(self, grid: DenseGrid | GridStore | str, config: SamplerConfig | None = None):
        self.config = config or SamplerConfig()
        grid = open_grid(grid)
        self.device = torch.device(self.config.device)
        self.dtype = getattr(torch, self.config.dtype)
        self.grid_id = grid.grid_id
        self.axes = grid.axes
        split_seed = self.config.seed if self.config.split_seed is None else self.config.split_seed
        fractions = (self.config.val_fraction, self.config.test_fraction) if self.config.holdout else (0.0, 0.0)
        self.split = split_nodes(grid.valid, grid.axes, *fractions, split_seed)
        from ..forward import ForwardConfig, ForwardModel, row_labels_of

        full, train = build_views(grid, self.split, self.device, self.dtype)
        self.interpolator, self.train_interpolator = full, train
        if self.config.vsini_range[1] > VSINI.stop:
            raise ValueError(f"v sin i up to {self.config.vsini_range[1]:g} km/s is beyond the forward model's {VSINI.stop:g}")
        n_rows = full.rows.shape[0]
        labels = row_labels_of(full.index_map.cpu().numpy(), full.axes, n_rows)
        fills = row_labels_of(train.index_map.cpu().numpy(), train.axes, n_rows)
        labels = np.where(np.isnan(labels), fills, labels)
        self.forward = ForwardModel.from_interpolator(full, ForwardConfig(epsilon=self.config.epsilon), row_labels=labels)
        self.train_forward = self.forward.with_index_map(train.index_map)
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.build_config = inputs.PreprocessConfig()
        wave = torch.as_tensor(np.array(canonical_wave()), device=self.device)[None]
        self.resampler = inputs.NativeResampler(wave, inputs.nearest_rows(wave))
        self.native_wave = wave
        log.info("sampler on %s: grid %s, %s nodes, %d sampleable training cells", self.device, self.grid_id,
                 self.split.counts(), len(train.sampleable_cells()))

    @classmethod
    def from_uri(cls, uri: str, **config) -> "Sampler":
        return cls(uri, SamplerConfig(**config))

    def with_config(self, **changes) -> "Sampler":
        """A sampler sharing this one's grid tensors with other nuisance settings (not split/device)."""
        other = object.__new__(Sampler)
        other.__dict__.update(self.__dict__, config=replace(self.config, **changes))
        return other

    # -- labels -----------------------------------------------------------------------------
    def split_records(self) -> list[dict]:
        """The split as rows (teff, logg, mh, split) for every node with a spectrum (for logging)."""
        return self.split.records(self.axes)

    def draw_labels(self, n: int, split: str = "train", generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 4) float32 physical labels of ``split``; a ``generator`` must live on the sampler's device."""
        g = generator or self.generator
        lo, hi = self.config.vsini_range
        if split == "train":
            return self.train_interpolator.draw_labels(n, g, (lo, hi))
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        nodes = self.split.nodes(split)
        if len(nodes) == 0:
            raise ValueError(f"the {split!r} split holds no node (grid too small or holdout disabled)")
        pick = torch.randint(len(nodes), (n,), generator=g, device=self.device).cpu().numpy()
        out = np.empty((n, 4), dtype=np.float64)
        for a in range(3):
            out[:, a] = self.axes[a][nodes[pick, a]]
        out[:, 3] = lo + (hi - lo) * torch.rand(n, generator=g, device=self.device, dtype=torch.float64).cpu().numpy()
        return torch.as_tensor(out, dtype=torch.float32, device=self.device)

    # -- batches ----------------------------------------------------------------------------
    def sample(self, batch_size: int, split: str = "train", generator: torch.Generator | None = None,
               clean: bool = True) -> Batch:
        """A batch of ``split`` with random labels, S/N, RV, shapes and masks (``clean``: with the DAE target)."""
        g = generator or self.generator
        c = self.config
        labels = self.draw_labels(batch_size, split, g)
        if c.noiseless:
            snr = torch.full((batch_size,), float("inf"), device=self.device)
        else:
            snr = nuisance.log_uniform(batch_size, *c.snr_range, generator=g, device=self.device)
        rv = c.rv_range[0] + (c.rv_range[1] - c.rv_range[0]) * torch.rand(batch_size, generator=g, device=self.device)
        model = self.train_forward if split == "train" else self.forward
        return self._render(model, labels, snr, rv, c.blaze, not c.noiseless, True, g, clean)

    def render(self, labels: torch.Tensor, snr: torch.Tensor | float | None = None, rv: torch.Tensor | float = 0.0,
               blaze: bool = True, noise: bool = True, mask: bool = True, generator: torch.Generator | None = None,
               model=None) -> Batch:
        """A batch at explicit labels (B, 4), on the full grid (held-out nodes included).

        Args:
            snr: (B,) or scalar median continuum S/N; None (or ``noise=False``) renders noiseless.
            rv: (B,) or scalar km/s.
            blaze: apply slant and blaze-like shapes; mask: apply random bad pixels.
            model: what renders the noiseless spectra (anything with the forward model's
                ``spectra(labels, rv) -> (B, O, P)``); default the sampler's forward model.
        """
        labels = torch.as_tensor(labels, dtype=torch.float32, device=self.device).reshape(-1, 4)
        B = labels.shape[0]
        noise = noise and snr is not None
        snr_t = (torch.full((B,), float("inf"), device=self.device) if not noise
                 else torch.as_tensor(snr, dtype=torch.float32, device=self.device).reshape(-1).expand(B).clone())
        rv_t = torch.as_tensor(rv, dtype=torch.float32, device=self.device).reshape(-1).expand(B).clone()
        return self._render(model or self.forward, labels, snr_t, rv_t, blaze, noise, mask, generator or self.generator)

    def _render(self, model, labels, snr, rv, blaze: bool, noise: bool, mask: bool, g, clean: bool = True) -> Batch:
        spec = model.spectra(labels, rv).to(self.dtype)  # (B, O, P)
        n = CHUNK if self.device.type == "cpu" else spec.shape[0]
        parts = [self._observe(spec[i : i + n], snr[i : i + n], blaze, noise, mask, g, clean)
                 for i in range(0, spec.shape[0], n)]
        x, usable, variance, target = (None if p[0] is None else torch.cat(p) for p in zip(*parts))
        return Batch(x=x, labels=labels.to(torch.float32), clean=target, snr=snr.to(torch.float32),
                     rv=rv.to(torch.float32), mask=usable, variance=variance.to(torch.float32))

    def _observe(self, spec: torch.Tensor, snr: torch.Tensor, blaze: bool, noise: bool, mask: bool, g, clean: bool):
        """Steps 4-6 on noiseless spectra (B, O, P) at S/N (B,): (x (B, 2, O, P), usable (B, O, P),
        variance (B, O, P), clean target (B, 2, O, P) or None)."""
        c = self.config
        B, O, P = spec.shape
        if blaze:
            shape = nuisance.linear_slant(B, O, P, c.max_slant, g, self.device) * nuisance.blaze_like(B, O, P, g, self.device)
        else:
            shape = torch.ones_like(spec)
        shape = shape.to(spec.dtype)
        read_noise = c.read_noise if noise else 0.0
        counts = nuisance.scale_to_counts(spec * shape, shape, snr, read_noise)
        if noise:
            counts = nuisance.expose(counts, read_noise, c.cosmic_rate, g)
        if mask and (c.bad_pixel_rate > 0 or c.edge_mask_prob > 0):
            usable = nuisance.bad_pixel_mask(B, O, P, c.bad_pixel_rate, c.edge_mask_prob, g, self.device)
        else:
            usable = torch.ones(B, O, P, dtype=torch.bool, device=self.device)
        # from here on, what preprocess does to a file: THE input builder
        variance = count_variance(counts, 1.0, read_noise)
        cfg = self.build_config
        usable = inputs.usable_pixels(self.native_wave, counts, variance, usable, cfg.edge_pixels)
        usable &= ~inputs.cosmic_mask(counts, variance, usable, cfg)
        flux, variance, usable = self.resampler(usable, counts, variance)
        x, _, usable, variance = inputs.build(flux, usable, variance)
        target = model_input(*normalise_orders(spec, torch.ones_like(usable))) if clean else None
        return x, usable, variance, target
