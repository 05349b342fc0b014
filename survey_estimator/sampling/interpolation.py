"""Trilinear interpolation of the synthetic grid in (Teff, log g, [M/H]), batched in torch.

The grid's spectra live on the device as one (R, L) tensor of rows; an ``index_map``
(nT, nG, nM) says which row holds each node (-1: no spectrum). Several interpolators may share
the rows with different index maps: that is how the training view of a split replaces held-out
nodes without a second copy of the grid (see :mod:`.splits`).

A label can be interpolated when every corner with a non-zero weight has a spectrum; a *cell*
(the box between 2x2x2 neighbouring nodes) is sampleable when all 8 corners have one. At a node
the weights are exactly 1 and 0, so interpolation returns the node's spectrum bit for bit.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from ..labels import VSINI
from ..layout import C_KMS
from ..synth.store import DenseGrid

CORNERS = torch.tensor(list(itertools.product((0, 1), repeat=3)), dtype=torch.long)  # (8, 3)


class OutsideGridError(ValueError):
    """Labels outside the grid, or in a cell with a missing corner (no model atmosphere)."""


class GridInterpolator:
    """Spectra at continuous (Teff, log g, [M/H]).

    Args:
        rows: (R, L) float tensor of continuum-normalised spectra (v sin i = 0).
        index_map: (nT, nG, nM) long tensor, row of each node or -1.
        axes: the node values of the three axes (Teff K, log g dex, [M/H] dex), increasing.
        wave: (L,) float64 air wavelengths (A), uniform in log(lambda).
        grid_id: the grid store's id (provenance).
    """

    def __init__(self, rows: torch.Tensor, index_map: torch.Tensor, axes, wave: np.ndarray, grid_id: str = ""):
        self.rows = rows
        self.device = rows.device
        self.index_map = index_map.to(device=rows.device, dtype=torch.long)
        self.axes = tuple(np.asarray(a, dtype=np.float64) for a in axes)
        self._axes_t = [torch.as_tensor(a, dtype=torch.float64, device=self.device) for a in self.axes]
        self.shape = tuple(len(a) for a in self.axes)
        if tuple(self.index_map.shape) != self.shape:
            raise ValueError(f"index map {tuple(self.index_map.shape)} does not match axes {self.shape}")
        self.wave = np.asarray(wave, dtype=np.float64)
        if self.wave.size != rows.shape[1]:
            raise ValueError(f"wave has {self.wave.size} points, rows have {rows.shape[1]}")
        dlog = np.diff(np.log(self.wave))
        if not np.allclose(dlog, dlog.mean(), rtol=1e-6, atol=0):
            raise ValueError("the grid's wavelengths are not uniform in log(lambda)")
        self.log_step = float(dlog.mean())
        self.velocity_step = C_KMS * self.log_step
        """Grid step in km/s."""
        self.grid_id = grid_id

    @classmethod
    def from_dense(cls, grid: DenseGrid, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "GridInterpolator":
        """Move the 'ok' nodes of a :class:`DenseGrid` to ``device`` (one row per valid node)."""
        rows, index_map = dense_rows(grid)
        return cls(torch.as_tensor(rows, dtype=dtype).to(device), torch.as_tensor(index_map), grid.axes, grid.wave, grid.grid_id)

    def with_index_map(self, index_map: torch.Tensor | np.ndarray) -> "GridInterpolator":
        """Another view of the same rows (no copy)."""
        return GridInterpolator(self.rows, torch.as_tensor(index_map), self.axes, self.wave, self.grid_id)

    # -- cells ------------------------------------------------------------------------------
    def cell_ok(self) -> torch.Tensor:
        """(max(nT-1,1), max(nG-1,1), max(nM-1,1)) bool: cells whose 8 corners have spectra.

        An axis with a single node contributes one degenerate (zero-width) cell.
        """
        m = self.index_map >= 0
        for dim in range(3):
            if m.shape[dim] > 1:
                a = m.narrow(dim, 0, m.shape[dim] - 1)
                b = m.narrow(dim, 1, m.shape[dim] - 1)
                m = a & b
        return m

    def sampleable_cells(self) -> torch.Tensor:
        """(n_cells, 3) long: lower-corner node indices of the sampleable cells."""
        return torch.nonzero(self.cell_ok())

    def draw_labels(self, n: int, generator: torch.Generator | None = None,
                    vsini_range: tuple[float, float] = (VSINI.start, VSINI.stop)) -> torch.Tensor:
        """(n, 4) float32 physical labels uniform over the union of sampleable cells, v sin i uniform.

        Cells have equal volume, so a uniform cell choice then a uniform point inside it is uniform
        in label space.
        """
        cells = self.sampleable_cells()
        if cells.shape[0] == 0:
            raise OutsideGridError("the grid has no cell whose 8 corners all have spectra")
        pick = torch.randint(cells.shape[0], (n,), generator=generator, device=self.device)
        lo = cells[pick]  # (n, 3)
        u = torch.rand(n, 4, generator=generator, device=self.device, dtype=torch.float64)
        out = torch.empty(n, 4, dtype=torch.float64, device=self.device)
        for a, ax in enumerate(self._axes_t):
            if len(ax) == 1:
                out[:, a] = ax[0]
            else:
                v0, v1 = ax[lo[:, a]], ax[lo[:, a] + 1]
                out[:, a] = v0 + u[:, a] * (v1 - v0)
        out[:, 3] = vsini_range[0] + u[:, 3] * (vsini_range[1] - vsini_range[0])
        return out.to(torch.float32)

    # -- interpolation ----------------------------------------------------------------------
    def corners(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and trilinear weights of the 8 corners of each label.

        Args:
            labels: (B, 3) or (B, 4) physical labels (only the first three are used).
        Returns:
            (rows (B, 8) long, -1 where a corner has no spectrum; weights (B, 8) float64).
        Raises:
            OutsideGridError if a label lies outside the axes or needs a missing corner.
        """
        x = torch.as_tensor(labels, device=self.device).to(torch.float64)[:, :3]
        B = x.shape[0]
        lower = torch.empty(B, 3, dtype=torch.long, device=self.device)
        frac = torch.empty(B, 3, dtype=torch.float64, device=self.device)
        for a, ax in enumerate(self._axes_t):
            tol = 1e-6 * max(1.0, float(ax.abs().max()))
            bad = (x[:, a] < ax[0] - tol) | (x[:, a] > ax[-1] + tol)
            if bad.any():
                i = int(torch.nonzero(bad)[0])
                raise OutsideGridError(
                    f"{('teff', 'logg', 'mh')[a]} = {float(x[i, a]):g} is outside the grid's "
                    f"{float(ax[0]):g}..{float(ax[-1]):g}"
                )
            if len(ax) == 1:
                lower[:, a] = 0
                frac[:, a] = 0.0
                continue
            i0 = torch.clamp(torch.searchsorted(ax, x[:, a].contiguous(), right=True) - 1, 0, len(ax) - 2)
            lower[:, a] = i0
            frac[:, a] = torch.clamp((x[:, a] - ax[i0]) / (ax[i0 + 1] - ax[i0]), 0.0, 1.0)
        corners = CORNERS.to(self.device)
        idx = lower[:, None, :] + corners[None]  # (B, 8, 3)
        for a in range(3):
            idx[..., a].clamp_(max=self.shape[a] - 1)
        rows = self.index_map[idx[..., 0], idx[..., 1], idx[..., 2]]  # (B, 8)
        w = torch.where(corners[None].bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(dim=-1)  # (B, 8)
        need = (w > 0) & (rows < 0)
        if need.any():
            i = int(torch.nonzero(need.any(dim=1))[0])
            raise OutsideGridError(
                f"labels (Teff={float(x[i, 0]):g}, log g={float(x[i, 1]):g}, [M/H]={float(x[i, 2]):g}) need a "
                "grid node without a spectrum (e.g. no model atmosphere, or a node held out of this split)"
            )
        return rows, w

    def interpolate(self, labels: torch.Tensor) -> torch.Tensor:
        """Spectra at continuous labels.

        Args:
            labels: (B, 3) or (B, 4) physical labels on any device.
        Returns:
            (B, L) flux (dtype of the rows) on this interpolator's device.
        """
        rows, w = self.corners(labels)
        w = w.to(self.rows.dtype)
        safe = rows.clamp_min(0)
        out = torch.zeros(rows.shape[0], self.rows.shape[1], dtype=self.rows.dtype, device=self.device)
        for k in range(rows.shape[1]):
            used = w[:, k] > 0
            if used.any():
                out += w[:, k, None] * self.rows[safe[:, k]]
        return out


def dense_rows(grid: DenseGrid) -> tuple[np.ndarray, np.ndarray]:
    """(rows (N, L) float32 of the valid nodes in C order, index_map (nT, nG, nM) int64, -1 if missing)."""
    index_map = np.full(grid.valid.shape, -1, dtype=np.int64)
    index_map[grid.valid] = np.arange(int(grid.valid.sum()))
    return np.ascontiguousarray(grid.flux[grid.valid], dtype=np.float32), index_map
