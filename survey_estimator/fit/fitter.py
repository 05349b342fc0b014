"""Maximum-likelihood fit of the forward model, batched in torch, started from the network.

For each spectrum (:func:`fit_spectra`):

1. starts: the network's estimate; where that fit is suspect (POOR_FIT, on a grid edge, not
   converged, or it needed a model error: the likelihood of a model that does not describe the
   star has several optima) and the network's sigma is wider than half a grid step
   (``wide_sigma_steps``), four more at +-1 sigma in Teff and log g; the fit with the lowest
   -2 ln L on the same pixels and model error is kept (:meth:`Fitter.deviance`);
2. Levenberg-Marquardt over the five non-linear parameters (Teff, log g, [M/H], v sin i, RV) and
   the per-order continuum, with the continuum re-solved linearly at every trial point; labels
   stay inside the model's bounds (projected steps);
3. model error: when chi^2 with the noise alone is far above its expectation (the model cannot
   describe the star to the noise level, as for every real star at high S/N), the relative
   model-error eps that brings the reduced chi^2 to 1 is solved for and the fit is repeated with
   ``var + (eps m)^2``; a spectrum the forward model describes keeps eps = 0;
   isolated outliers (cosmics, bad pixels: residuals beyond ``clip_sigma``) are masked and the
   fit repeated; below S/N ``model_variance_snr`` the noise variance is first re-derived from the
   fitted model (a variance from the noisy counts is correlated with the noise and biases the fit);
4. covariance: the inverse Fisher matrix at the optimum (continuum and RV marginalised); where a
   model error was needed, multiplied by the correlation length of the whitened residuals
   (:func:`correlation_length`), since model errors are correlated over a line width. That is
   ``cov_stat`` (raw); ``cov_cal`` scales it per label by factors calibrated on held-out spectra
   as a function of S/N (:mod:`.calibration`); ``cov`` adds to that the grid's measured
   interpolation error in quadrature (calibrated on PySME spectra synthesised between the nodes,
   :func:`.grid.interpolation_error`): the multilinear grid cannot do better than that, whatever
   the S/N.

Flags (:class:`FitFlag`): FIT_FAILED (non-finite or singular), POOR_FIT (eps above
``poor_fit_model_error``: the star is not like the grid), AT_GRID_EDGE (Teff, log g or [M/H] ends
within 1 sigma of the model's bounds, or v sin i at its maximum: the truth may lie beyond),
OUTSIDE_GRID (the optimum needs a node without a spectrum).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import IntFlag

import numpy as np
import torch

from ..forward import ForwardModel
from . import continuum, likelihood
from .calibration import SigmaCalibration, measured_snr, shipped_calibration
from .likelihood import N_THETA, THETA_SCALE

log = logging.getLogger(__name__)

FIT_VERSION = "mlfit-v1"


class FitFlag(IntFlag):
    """Fit outcome bits (stable values; the catalogue stores them in its own flag word)."""

    FIT_FAILED = 1 << 0
    POOR_FIT = 1 << 1
    AT_GRID_EDGE = 1 << 2
    OUTSIDE_GRID = 1 << 3

    def names(self) -> list[str]:
        return [f.name for f in FitFlag if f in self]


@dataclass(frozen=True)
class FitConfig:
    """Settings of the fit.

    Attributes:
        max_iterations: Levenberg-Marquardt iterations per pass.
        tolerance: converged when chi^2 improves by less than this fraction and the step is below
            ``step_tolerance`` grid steps, or when an accepted step is below ``sigma_tolerance``
            times the statistical 1-sigma of every parameter.
        model_error: "auto" (solved per spectrum, step 3 of the module docstring) or a fixed
            relative model error (0 = noise only).
        poor_fit_model_error: POOR_FIT when the solved model error exceeds this (relative flux).
        wide_sigma_steps: extra starts where the network's sigma exceeds this many grid steps.
        cover_sigma: a first guess more than this many of its sigmas outside the grid's Teff,
            log g or [M/H] range is not fitted (:meth:`Fitter.covers`): the fit could only end
            pinned to the edge, further from the star than the network.
        rv_limit: |RV residual| bound in km/s.
        chunk: spectra per batch (memory: ~10 MB per spectrum).
        degree: per-order continuum polynomial degree.
        vsini_floor: km/s; below it the covariance is evaluated at this v sin i (at 0 the model's
            derivative in v sin i vanishes and the Fisher matrix is singular).
        model_variance_snr: below this median S/N the noise variance is re-derived from the model
            (photon noise of the fitted spectrum, not of the noisy data) and the fit repeated.
        first_pass_sigma_tolerance: ``sigma_tolerance`` of the first pass for those spectra: the
            repeated fit converges to ``sigma_tolerance`` from there, so the first needs only to
            come near its optimum (saves LM iterations).
        clip_sigma: pixels whose residual exceeds this many sigmas after the first pass (cosmics,
            bad pixels the mask missed) are masked, with their neighbours, for the final pass.
        precision: dtype of the per-pixel work ("float32"; the normal equations are solved in
            float64 either way).
    """

    max_iterations: int = 25
    tolerance: float = 1e-6
    step_tolerance: float = 1e-3
    sigma_tolerance: float = 0.05
    first_pass_sigma_tolerance: float = 0.3
    model_error: str | float = "auto"
    poor_fit_model_error: float = 0.12
    wide_sigma_steps: float = 0.5
    cover_sigma: float = 2.0
    rv_limit: float = 15.0
    chunk: int = 32
    degree: int = continuum.DEGREE
    clip_sigma: float = 5.0
    model_variance_snr: float = 40.0
    vsini_floor: float = 1.0
    precision: str = "float32"
    interpolation_error: tuple[float, float, float, float] | None = None
    """1-sigma per label added in quadrature to the covariance; None: the grid's own record
    (:func:`.grid.interpolation_error`), or none when it has no record."""
    calibrate: bool = True
    """Scale the statistical covariance by the S/N-dependent factors of ``calibration``."""
    calibration: SigmaCalibration | None = None
    """None: the record shipped for the grid (:func:`.calibration.shipped_calibration`), if any."""


@dataclass
class FitResult:
    """Fitted parameters of B spectra (numpy).

    Attributes:
        labels: (B, 4) Teff K, log g, [M/H] dex, v sin i km/s.
        cov: (B, 4, 4) covariance of the labels: ``cov_cal`` plus the grid's interpolation error
            (diagonal, in quadrature).
        cov_stat: (B, 4, 4) the raw statistical covariance (inverse Fisher, continuum and RV
            marginalised, times the correlation length where a model error was needed).
        cov_cal: (B, 4, 4) ``cov_stat`` with each label's sigma scaled by the factor calibrated on
            held-out spectra at the spectrum's S/N (equal to ``cov_stat`` without a calibration).
        snr: (B,) median S/N per usable pixel of the normalised spectrum.
        rv: (B,) km/s RV residual; rv_sigma (B,).
        chi2_red: (B,) reduced chi^2 with the noise alone (1 for a spectrum the model describes).
        model_error: (B,) relative model error used in the likelihood (0 when none was needed).
        correlation_length: (B,) pixels over which the whitened residuals are correlated (1 when
            the model describes the spectrum); the covariance is multiplied by it.
        converged: (B,) bool; iterations: (B,) LM iterations used (all passes).
        flags: (B,) :class:`FitFlag` bits; dof: (B,) degrees of freedom.
    """

    labels: np.ndarray
    cov: np.ndarray
    cov_stat: np.ndarray
    cov_cal: np.ndarray
    snr: np.ndarray
    rv: np.ndarray
    rv_sigma: np.ndarray
    chi2_red: np.ndarray
    model_error: np.ndarray
    correlation_length: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    flags: np.ndarray
    dof: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def sigma(self) -> np.ndarray:
        """(B, 4) 1-sigma of the labels."""
        return np.sqrt(np.clip(np.diagonal(self.cov, axis1=1, axis2=2), 0, None))

    @property
    def sigma_stat(self) -> np.ndarray:
        """(B, 4) raw statistical 1-sigma (inverse Fisher, without the interpolation error)."""
        return np.sqrt(np.clip(np.diagonal(self.cov_stat, axis1=1, axis2=2), 0, None))

    @property
    def sigma_cal(self) -> np.ndarray:
        """(B, 4) calibrated statistical 1-sigma (without the interpolation error)."""
        return np.sqrt(np.clip(np.diagonal(self.cov_cal, axis1=1, axis2=2), 0, None))

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class _State:
    theta: torch.Tensor  # (B, 5)
    spec: torch.Tensor  # (B, O, P)
    jac: torch.Tensor  # (B, 5, O, P)
    coef: torch.Tensor  # (B, O, D)
    chi2: torch.Tensor  # (B,)


class Fitter:
    """Fits observations with one forward model (reuse it: the model's table is loaded once)."""

    def __init__(self, model: ForwardModel, config: FitConfig | None = None):
        self.model = model
        self.config = config or FitConfig()
        O, P = model.shape
        self.work = getattr(torch, self.config.precision)
        self.basis = continuum.design(P, self.config.degree, dtype=self.work, device=model.device)
        self.scale = torch.as_tensor(THETA_SCALE, dtype=torch.float64, device=model.device)
        self.lo = torch.as_tensor([*model.lo, -self.config.rv_limit], dtype=torch.float64, device=model.device)
        self.hi = torch.as_tensor([*model.hi, self.config.rv_limit], dtype=torch.float64, device=model.device)
        from .grid import interpolation_error

        floor = self.config.interpolation_error
        floor = interpolation_error(model.grid_id) if floor is None else np.asarray(floor, dtype=np.float64)
        if floor is None:
            log.info("grid %s has no measured interpolation error: the fit's sigmas are statistical only", model.grid_id)
        self.interpolation_error = np.zeros(4) if floor is None else floor
        """(4,) 1-sigma per label added in quadrature to ``cov`` (see :class:`FitResult`)."""
        calibration = self.config.calibration or shipped_calibration(model.grid_id)
        if self.config.calibrate and calibration is None:
            log.info("grid %s has no sigma calibration: the fit's statistical sigmas are raw", model.grid_id)
        self.calibration = calibration if self.config.calibrate else None
        """The :class:`SigmaCalibration` applied to ``cov_stat`` (None: raw)."""

    def covers(self, mean: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """(B,) bool: whether the grid's Teff, log g and [M/H] range holds each first guess to
        within ``config.cover_sigma`` of its sigmas.

        Args:
            mean: (B, 4) first guesses in physical units (Teff K, log g, [M/H] dex, v sin i km/s).
            sigma: (B, 4) their 1-sigma uncertainties, same units.
        """
        mean, sigma = np.asarray(mean, dtype=np.float64)[:, :3], np.asarray(sigma, dtype=np.float64)[:, :3]
        reach = self.config.cover_sigma * np.nan_to_num(sigma, nan=0.0)
        lo, hi = np.asarray(self.model.lo[:3]), np.asarray(self.model.hi[:3])
        return ((mean + reach >= lo) & (mean - reach <= hi)).all(axis=1)

    # -- one pass of Levenberg-Marquardt ---------------------------------------------------------
    def _evaluate(self, theta, y, w, resolution) -> _State:
        spec, jac = self.model.spectra_and_jacobian(theta[:, :4], theta[:, 4], resolution)
        spec, jac = spec.to(self.work), jac.to(self.work)
        coef = continuum.solve(y, spec, w, self.basis)
        chi2 = likelihood.chi2(y, spec * continuum.evaluate(coef, self.basis), w)
        return _State(theta, spec, jac, coef, chi2)

    def _lm(self, theta, y, w, resolution, state: _State | None = None, sigma_tolerance: torch.Tensor | None = None):
        """Minimise chi^2 from ``theta`` (B, 5) with fixed weights; returns (state, iterations, converged).

        ``state``: the model already evaluated at ``theta`` (only the continuum and chi^2 are redone
        for the new weights); ``sigma_tolerance``: (B,) per spectrum (default: the config's)."""
        cfg = self.config
        B = theta.shape[0]
        if state is None:
            st = self._evaluate(theta, y, w, resolution)
        else:
            coef = continuum.solve(y, state.spec, w, self.basis)
            chi2 = likelihood.chi2(y, state.spec * continuum.evaluate(coef, self.basis), w)
            st = _State(theta.clone(), state.spec.clone(), state.jac.clone(), coef, chi2)
        lam = torch.full((B,), 1e-3, dtype=torch.float64, device=theta.device)
        iters = torch.zeros(B, dtype=torch.long, device=theta.device)
        done = torch.zeros(B, dtype=torch.bool, device=theta.device)
        tol = torch.full((B,), cfg.sigma_tolerance, dtype=torch.float64, device=theta.device) if sigma_tolerance is None else sigma_tolerance
        for _ in range(cfg.max_iterations):
            act = torch.nonzero(~done)[:, 0]
            if act.numel() == 0:
                break
            cont = continuum.evaluate(_rows(st.coef, act), self.basis)
            ne = likelihood.normal_equations(_rows(y, act), _rows(w, act), _rows(st.spec, act), _rows(st.jac, act), cont, self.basis)
            step = ne.theta_step(lam[act])
            sigma = torch.sqrt(torch.diagonal(ne.theta_inverse()[0], dim1=1, dim2=2).clamp_min(0))  # scaled units
            # converged before trying: the proposed step is a small fraction of the statistical
            # error, so the current point is the optimum to that fraction (saves one evaluation)
            tiny = (step.abs() <= _rows(tol, act)[:, None] * torch.nan_to_num(sigma, nan=0.0)).all(dim=1)
            tiny &= lam[act] <= 1e-2  # a Gauss-Newton step, not one damped short
            done[act[tiny]] = True
            act, step, sigma = act[~tiny], step[~tiny], sigma[~tiny]
            if act.numel() == 0:
                break
            new_theta = torch.minimum(torch.maximum(st.theta[act] + step * self.scale, self.lo), self.hi)
            trial = self._evaluate(new_theta, _rows(y, act), _rows(w, act), resolution)
            better = torch.isfinite(trial.chi2) & (trial.chi2 <= st.chi2[act])
            moved = ((new_theta - st.theta[act]) / self.scale).abs().amax(dim=1)
            gain = (st.chi2[act] - trial.chi2) / st.chi2[act].clamp_min(1e-300)
            iters[act] += 1
            if act.numel() == B and bool(better.all()):
                st = trial  # every row moved: no copies of the (B, 5, O, P) Jacobian
            else:
                sel = act[better]
                for name in ("theta", "spec", "jac", "coef", "chi2"):
                    getattr(st, name)[sel] = getattr(trial, name)[better]
            lam[act] = torch.where(better, lam[act] / 3, lam[act] * 5).clamp(1e-9, 1e9)
            # converged: the step is a small fraction of the statistical error (or of a grid step)
            tiny = (step.abs() <= tol[act, None] * torch.nan_to_num(sigma, nan=0.0)).all(dim=1)
            small = (moved < cfg.step_tolerance) | (better & tiny) | (better & (gain < cfg.tolerance) & (moved < 10 * cfg.step_tolerance))
            done[act] = small | (lam[act] >= 1e9)
        return st, iters, done

    # -- public -----------------------------------------------------------------------------------
    def fit(self, y, var, mask, start, resolution: float | None = None) -> FitResult:
        """Fit B spectra.

        Args:
            y, var: (B, O, P) normalised flux and its variance; mask (B, O, P) bool.
            start: (B, 4) first-guess labels (e.g. the network's mean).
            resolution: the observations' resolving power (None: the grid's).
        """
        parts = [self._fit_chunk(*(torch.as_tensor(np.asarray(a))[i : i + self.config.chunk] for a in (y, var, mask, start)),
                                 resolution) for i in range(0, len(start), self.config.chunk)]
        return FitResult(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in FitResult.__dataclass_fields__ if k != "meta"},
                         meta={"version": FIT_VERSION, "forward": self.model.describe()})

    def _fit_chunk(self, y, var, mask, start, resolution) -> FitResult:
        cfg = self.config
        dev = self.model.device
        y = torch.nan_to_num(y.to(dev, self.work), nan=1.0)
        var = var.to(dev, self.work)
        mask = mask.to(dev).bool() & torch.isfinite(var) & (var > 0)
        B = y.shape[0]
        theta = torch.zeros(B, N_THETA, dtype=torch.float64, device=dev)
        theta[:, :4] = torch.as_tensor(start, dtype=torch.float64, device=dev)
        theta = torch.minimum(torch.maximum(torch.nan_to_num(theta), self.lo), self.hi)
        eps0 = 0.0 if cfg.model_error == "auto" else float(cfg.model_error)
        w = likelihood.weights(mask, var, torch.ones_like(y), eps0)
        # at low S/N the fit is repeated with the model's variance (below): the first pass only
        # needs to come near its optimum
        snr = measured_snr(y, var, mask)
        low = torch.isfinite(snr) & (snr < cfg.model_variance_snr)
        tol = torch.where(low, cfg.first_pass_sigma_tolerance, cfg.sigma_tolerance).to(torch.float64)
        st, iters, conv = self._lm(theta, y, w, resolution, sigma_tolerance=tol)
        n_used = mask.sum(dim=(1, 2))
        orders_used = (mask.sum(dim=2) > 0).sum(dim=1)
        dof = (n_used - N_THETA - orders_used * self.basis.shape[0]).clamp_min(1).to(torch.float64)
        model = st.spec * continuum.evaluate(st.coef, self.basis)
        eps = torch.full((B,), eps0, dtype=torch.float64, device=dev)
        # at low S/N a variance estimated from the noisy counts is correlated with the noise and
        # biases the fit: photon noise of the MODEL instead, var * model / y (the counts-per-unit-
        # flux scale y / var is smooth), and the fit repeated
        if low.any():
            var = torch.where(low[:, None, None] & mask & (y > 0), var * model.clamp_min(1e-3) / y.clamp_min(1e-3), var)
            st, iters, conv = self._refit(st, iters, conv, low, y, likelihood.weights(mask, var, model, eps0), resolution)
            model[low] = st.spec[low] * continuum.evaluate(st.coef[low], self.basis)
        # isolated outliers (cosmics, bad pixels the mask missed): masked when they are few
        mask, again = self._clip(y, model, var, eps, mask, max_fraction=0.002)
        if again.any():
            st, iters, conv = self._refit(st, iters, conv, again, y, likelihood.weights(mask, var, model, eps), resolution)
            model[again] = st.spec[again] * continuum.evaluate(st.coef[again], self.basis)
        w_noise = likelihood.weights(mask, var, model, 0.0)
        chi2_red = likelihood.chi2(y, model, w_noise) / dof
        if cfg.model_error == "auto":
            need = chi2_red > 1 + 4 * torch.sqrt(2 / dof)
            if need.any():
                idx = torch.nonzero(need)[:, 0]
                eps[idx] = _solve_model_error(y[idx], var[idx], mask[idx], model[idx], dof[idx]).to(eps.dtype)
                # outliers beyond the noise AND the model error, then the fit with both
                mask, _ = self._clip(y, model, var, eps, mask, max_fraction=1.0, rows=need)
                w_noise = likelihood.weights(mask, var, model, 0.0)
                st, iters, conv = self._refit(st, iters, conv, need, y, likelihood.weights(mask, var, model, eps), resolution)
                model[idx] = st.spec[idx] * continuum.evaluate(st.coef[idx], self.basis)
                chi2_red[idx] = likelihood.chi2(y[idx], model[idx], w_noise[idx]) / dof[idx]
        w_final = likelihood.weights(mask, var, model, eps)
        jac = st.jac
        slow = st.theta[:, 3] < cfg.vsini_floor
        if slow.any():
            # the spectrum is even in v sin i, so its derivative vanishes at 0 and the Fisher
            # information with it: the covariance is taken at the floor instead (the resolution
            # limit: the sigma then says how large a v sin i the data could still hide)
            at = st.theta[slow].clone()
            at[:, 3] = cfg.vsini_floor
            jac = jac.clone()
            jac[slow] = self.model.spectra_and_jacobian(at[:, :4], at[:, 4], resolution)[1].to(self.work)
        cov5 = likelihood.covariance(likelihood.normal_equations(y, w_final, st.spec, jac, continuum.evaluate(st.coef, self.basis), self.basis))
        # a model error is not white: its residuals come in line-wide features, so N pixels hold
        # only ~N / L independent ones and the covariance grows by the correlation length L
        corr = torch.ones(B, dtype=torch.float64, device=dev)
        if (eps > 0).any():
            idx = torch.nonzero(eps > 0)[:, 0]
            corr[idx] = correlation_length((y[idx] - model[idx]) * torch.sqrt(w_final[idx]), mask[idx]).to(corr.dtype)
            cov5 = cov5 * corr[:, None, None]
        flags = self._flags(st.theta, cov5, eps)
        cov_stat = cov5[:, :4, :4].cpu().numpy()
        snr = snr.cpu().numpy()
        factor = np.ones((B, 4)) if self.calibration is None else self.calibration.at(snr)
        cov_cal = cov_stat * factor[:, :, None] * factor[:, None, :]
        return FitResult(
            labels=st.theta[:, :4].cpu().numpy(),
            cov=cov_cal + np.diag(self.interpolation_error**2)[None],
            cov_stat=cov_stat,
            cov_cal=cov_cal,
            snr=snr,
            rv=st.theta[:, 4].cpu().numpy(),
            rv_sigma=torch.sqrt(cov5[:, 4, 4]).cpu().numpy(),
            chi2_red=chi2_red.cpu().numpy(),
            model_error=eps.cpu().numpy(),
            correlation_length=corr.cpu().numpy(),
            converged=conv.cpu().numpy(),
            iterations=iters.cpu().numpy(),
            flags=flags,
            dof=dof.cpu().numpy(),
        )

    def deviance(self, y, var, mask, labels, rv, model_error, resolution: float | None = None) -> np.ndarray:
        """(B,) -2 ln L (up to a constant) of B spectra at fixed labels (B, 4) and RV (B,) km/s,
        the continuum solved, with the relative model error (B,): the score that compares fits
        of one spectrum from different starts on the same pixels and the same error model
        (each fit's own chi^2 depends on the pixels it clipped and the model error it solved).

        ``y, var, mask``: (B, O, P) as for :meth:`fit`."""
        dev = self.model.device
        y = torch.nan_to_num(torch.as_tensor(np.asarray(y)).to(dev, self.work), nan=1.0)
        var = torch.as_tensor(np.asarray(var)).to(dev, self.work)
        mask = torch.as_tensor(np.asarray(mask)).to(dev).bool() & torch.isfinite(var) & (var > 0)
        spec = self.model.spectra(torch.as_tensor(labels, dtype=torch.float64, device=dev),
                                  torch.as_tensor(rv, dtype=torch.float64, device=dev), resolution).to(self.work)
        w = likelihood.weights(mask, var, torch.ones_like(y), 0.0)
        model = spec * continuum.evaluate(continuum.solve(y, spec, w, self.basis), self.basis)
        w = likelihood.weights(mask, var, model, torch.as_tensor(np.asarray(model_error), device=dev))
        model = spec * continuum.evaluate(continuum.solve(y, spec, w, self.basis), self.basis)
        logdet = torch.where(w > 0, -torch.log(torch.where(w > 0, w, torch.ones_like(w))), torch.zeros_like(w))
        return (likelihood.chi2(y, model, w) + logdet.sum(dim=(1, 2), dtype=torch.float64)).cpu().numpy()

    def _refit(self, st: _State, iters, conv, rows: torch.Tensor, y, w, resolution):
        """Run LM again for the spectra ``rows`` (B,) bool from their current optimum with weights ``w``."""
        idx = torch.nonzero(rows)[:, 0]
        here = _State(st.theta[idx], st.spec[idx], st.jac[idx], st.coef[idx], st.chi2[idx])
        st2, it2, conv2 = self._lm(st.theta[idx], y[idx], w[idx], resolution, state=here)
        for name in ("theta", "spec", "jac", "coef", "chi2"):
            getattr(st, name)[idx] = getattr(st2, name)
        iters[idx] += it2
        conv[idx] = conv2
        return st, iters, conv

    def _clip(self, y, model, var, eps, mask, max_fraction: float, rows: torch.Tensor | None = None):
        """Mask pixels (and their neighbours) whose residual exceeds ``clip_sigma`` of the noise
        plus model error, in spectra where they are at most ``max_fraction`` of the usable pixels.
        Returns (new mask, (B,) bool: spectra that lost pixels)."""
        w = likelihood.weights(mask, var, model, eps)
        bad = (torch.nan_to_num(y - model).abs() * torch.sqrt(w) > self.config.clip_sigma) & mask
        bad = torch.nn.functional.max_pool1d(bad.to(y.dtype).reshape(-1, 1, bad.shape[-1]), 3, 1, 1).reshape(bad.shape) > 0
        bad &= mask
        n_bad = bad.sum(dim=(1, 2))
        take = (n_bad > 0) & (n_bad <= max_fraction * mask.sum(dim=(1, 2)))
        if rows is not None:
            take &= rows
        return mask & ~(bad & take[:, None, None]), take

    def _flags(self, theta, cov5, eps) -> np.ndarray:
        t = theta.cpu().numpy()
        flags = np.zeros(len(t), dtype=np.int64)
        bad = ~np.isfinite(t).all(axis=1) | ~np.isfinite(cov5.cpu().numpy()).all(axis=(1, 2))
        flags[bad] |= int(FitFlag.FIT_FAILED)
        # within 1 sigma (or a thousandth of a step) of a bound: the bound shapes the estimate
        sig = np.sqrt(np.clip(np.nan_to_num(np.diagonal(cov5.cpu().numpy(), axis1=1, axis2=2)[:, :3]), 0, None))
        reach = np.maximum(sig, 1e-3 * np.asarray(THETA_SCALE[:3]))
        lo, hi = self.model.lo[:3], self.model.hi[:3]
        edge = ((t[:, :3] - lo < reach) | (hi - t[:, :3] < reach)).any(axis=1)
        edge |= t[:, 3] >= self.model.hi[3] - 1e-3
        flags[edge] |= int(FitFlag.AT_GRID_EDGE)
        inside = self.model.inside(torch.as_tensor(np.nan_to_num(t[:, :4]))).cpu().numpy()
        flags[~inside] |= int(FitFlag.OUTSIDE_GRID)
        flags[eps.cpu().numpy() > self.config.poor_fit_model_error] |= int(FitFlag.POOR_FIT)
        return flags


def _rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``t[rows]`` for a (n,) index tensor; ``t`` itself (no copy) when ``rows`` are all of its rows in order."""
    return t if rows.numel() == t.shape[0] else t[rows]


def correlation_length(resid: torch.Tensor, mask: torch.Tensor, max_lag: int = 64) -> torch.Tensor:
    """(B,) integrated autocorrelation length (pixels) of whitened residuals (B, O, P):
    ``1 + 2 sum_k rho_k``, summed over lags until rho first drops below zero (at most ``max_lag``),
    rho_k pooled over the orders from usable pixel pairs. 1 for white noise."""
    r = torch.where(mask, resid, torch.zeros_like(resid))
    m = mask.to(r.dtype)
    var = (r * r).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1)
    total = torch.ones(r.shape[0], dtype=r.dtype, device=r.device)
    alive = torch.ones(r.shape[0], dtype=torch.bool, device=r.device)
    for k in range(1, max_lag + 1):
        pairs = (m[..., k:] * m[..., :-k]).sum(dim=(1, 2)).clamp_min(1)
        rho = (r[..., k:] * r[..., :-k]).sum(dim=(1, 2)) / pairs / var.clamp_min(1e-300)
        alive &= rho > 0
        if not alive.any():
            break
        total = total + torch.where(alive, 2 * rho, torch.zeros_like(rho))
    return total.clamp_min(1.0)


def _solve_model_error(y, var, mask, model, dof, iterations: int = 40) -> torch.Tensor:
    """(B,) relative model error eps with sum r^2 / (var + eps^2 m^2) = dof (bisection in log eps)."""
    r2 = torch.where(mask, torch.nan_to_num(y - model) ** 2, torch.zeros_like(y))
    m2 = torch.where(mask, model**2, torch.zeros_like(y))
    lo = torch.full(dof.shape, -10.0, dtype=torch.float64, device=y.device)  # log eps
    hi = torch.full(dof.shape, 0.0, dtype=torch.float64, device=y.device)
    v = torch.where(mask, var, torch.ones_like(var))
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        e2 = torch.exp(2 * mid).to(y.dtype)[:, None, None]
        c = (r2 / (v + e2 * m2)).sum(dim=(1, 2), dtype=torch.float64)
        too_big = c > dof  # chi^2 still above dof: eps must grow
        lo = torch.where(too_big, mid, lo)
        hi = torch.where(too_big, hi, mid)
    return torch.exp(0.5 * (lo + hi))


def extra_starts(mean: np.ndarray, sigma: np.ndarray, wide_sigma_steps: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """More first guesses around the network's estimate: (starts (S, 4), owner (S,) row index).

    Where the network's sigma in Teff or log g is wider than ``wide_sigma_steps`` grid steps, four
    starts at +-1 sigma in each."""
    mean = np.asarray(mean, dtype=np.float64).reshape(-1, 4)
    sigma = np.nan_to_num(np.asarray(sigma, dtype=np.float64).reshape(-1, 4))
    wide = (sigma[:, 0] > wide_sigma_steps * THETA_SCALE[0]) | (sigma[:, 1] > wide_sigma_steps * THETA_SCALE[1])
    starts, owner = [], []
    for a in (0, 1):
        for sign in (-1.0, 1.0):
            s = mean[wide].copy()
            s[:, a] += sign * sigma[wide, a]
            starts.append(s)
            owner.append(np.flatnonzero(wide))
    return np.concatenate(starts), np.concatenate(owner)


def fit_spectra(fitter: Fitter, y, var, mask, nn_mean, nn_sigma=None, resolution: float | None = None) -> FitResult:
    """Fit B spectra from the network's estimate (see the module docstring).

    Spectra whose first fit is suspect (POOR_FIT, on a grid edge, not converged, or a model error
    was needed) and whose network sigma is wide are fitted again from :func:`extra_starts`;
    the start with the lowest -2 ln L (:meth:`Fitter.deviance`) wins. ``res.meta["starts"]`` counts the
    fits run."""
    y, var, mask = (np.asarray(a) for a in (y, var, mask))
    nn_mean = np.asarray(nn_mean, dtype=np.float64).reshape(-1, 4)
    res = fitter.fit(y, var, mask, nn_mean, resolution)
    res.meta["starts"] = len(nn_mean)
    if nn_sigma is None:
        return res
    # suspect: not converged, POOR_FIT, on an edge, or a model error was needed. A model that
    # does not describe the star (every real star at high S/N) has a rough likelihood with several
    # optima (the real Sun: 6035 K at chi2_red 34.1 from the network's start, 5866 K at 31.2 from
    # Teff - 1 sigma), and which one the first fit reaches must not decide the answer.
    suspect = ~res.converged | (res.model_error > 0) | ((res.flags & int(FitFlag.AT_GRID_EDGE | FitFlag.POOR_FIT)) > 0)
    rows = np.flatnonzero(suspect)
    if rows.size == 0:
        return res
    starts, owner = extra_starts(nn_mean[rows], np.asarray(nn_sigma)[rows], fitter.config.wide_sigma_steps)
    if owner.size == 0:
        return res
    owner = rows[owner]
    more = fitter.fit(y[owner], var[owner], mask[owner], starts, resolution)
    res.meta["starts"] += len(owner)
    # the starts are compared on the same pixels (the input mask) with the same model error
    # (the smallest any start needed): each fit's own chi^2 depends on what it clipped
    rows = np.unique(owner)
    cand_row = np.concatenate([rows, owner])  # candidate k: the first fit of a row, then its extra starts
    lab = np.concatenate([res.labels[rows], more.labels])
    eps = np.full(len(res), np.inf)
    np.minimum.at(eps, cand_row, np.concatenate([res.model_error[rows], more.model_error]))
    score = fitter.deviance(y[cand_row], var[cand_row], mask[cand_row], lab, np.concatenate([res.rv[rows], more.rv]),
                            eps[cand_row], resolution)
    score = np.where(np.isfinite(score) & np.isfinite(lab).all(axis=1), score, np.inf)
    # starts that reach the same optimum differ by rounding: one that ran out of iterations wins
    # only if it is better by more than 1 in -2 ln L (a 1-sigma difference)
    score = score + np.where(np.concatenate([res.converged[rows], more.converged]), 0.0, 1.0)
    order = np.lexsort((score, cand_row))  # by row, then score; ties keep the first fit (stable)
    best = order[np.r_[True, cand_row[order][1:] != cand_row[order][:-1]]]
    for k in best[best >= len(rows)]:
        for name in FitResult.__dataclass_fields__:
            if name != "meta":
                getattr(res, name)[cand_row[k]] = getattr(more, name)[k - len(rows)]
    return res
