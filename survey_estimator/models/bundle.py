"""A trained model as one versioned directory: estimator + optional DAE + label scaling + manifest.

Layout of a bundle directory::

    manifest.json            what the model is and what data it expects (see :class:`Manifest`)
    estimator.safetensors    estimator weights
    dae.safetensors          DAE weights (only when the bundle has a DAE)

Weights are safetensors (plain tensors, no pickle); networks are rebuilt from the manifest's
architecture name and config through :mod:`.registry`. Loading refuses (:class:`BundleError`) a
bundle whose layout, normalisation or preprocessing version, label names, format or weight
checksums differ from what this code expects.

A bundle is data only: :func:`fetch_bundle` copies exactly the files above (:data:`BUNDLE_FILES`)
from a store into one folder, nothing else; every weights file needs its SHA-256 in the manifest;
the manifest, its network configs and the weights files have size limits (:data:`MAX_MANIFEST_BYTES`,
:func:`check_config`, :data:`MAX_WEIGHTS_BYTES`, :data:`MAX_PARAMETERS`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import re
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..labels import LABEL_HI, LABEL_LO, LABEL_NAMES, LabelScaler
from ..layout import LAYOUT_VERSION
from ..normalise import NORMALISATION_VERSION
from .heads import to_physical
from .registry import ModelConfigError, architecture, build_model, describe

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
"""Version of the directory layout and manifest schema written by :meth:`ModelBundle.save`."""
MANIFEST = "manifest.json"
ESTIMATOR_FILE = "estimator.safetensors"
DAE_FILE = "dae.safetensors"
BUNDLE_FILES = (MANIFEST, ESTIMATOR_FILE, DAE_FILE)
"""The only files a bundle folder holds and the only ones :func:`fetch_bundle` copies."""

MAX_MANIFEST_BYTES = 1 << 20
"""manifest.json larger than this (1 MiB; the production one is 10 kB) is refused."""
MAX_WEIGHTS_BYTES = 2 << 30
"""A weights file larger than this (2 GiB) is refused before it is hashed or read."""
MAX_PARAMETERS = 200_000_000
"""Most tensor elements in one weights file (the production estimator has 2.3 million)."""
MAX_CONFIG_ITEMS = 64
"""Most keys in a network config and most items in one of its lists."""
MAX_CONFIG_INT = 1 << 16
"""Largest magnitude of an integer in a network config (widths, kernel sizes, input size)."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleError(RuntimeError):
    """A bundle that cannot be loaded by this code (missing, corrupt or version-mismatched)."""


@dataclass
class Manifest:
    """Everything needed to rebuild a bundle and to know what input it expects (JSON)."""

    name: str
    architecture: str
    config: dict[str, Any]
    head: str
    layout_version: str
    preprocessing_version: str
    normalisation_version: str
    grid_id: str
    label_names: list[str]
    label_scaler: dict[str, Any]
    calibration: dict[str, float]
    """Per-label factors applied to sigma (1.0 = uncalibrated)."""
    git_commit: str
    created_at: str
    """UTC, ISO 8601."""
    dae: dict[str, Any] | None = None
    """{"architecture": "dae", "config": {...}} or None."""
    metrics: dict[str, Any] = field(default_factory=dict)
    label_range: dict[str, list[float]] | None = None
    """{label: [lo, hi]} physical range the estimator was trained on (grid span; v sin i range);
    None = the full Table-1 axes (:data:`survey_estimator.labels.LABEL_LO` / ``LABEL_HI``)."""
    sigma_limit: dict[str, float] | None = None
    """{label: largest calibrated 1-sigma the estimator gave on its validation spectra (S/N 10-200)};
    a larger sigma marks an input unlike its training set (catalogue flag ``UNFAMILIAR``)."""
    grid_uri: str | None = None
    """Where the grid the estimator was trained on lives (store folder or s3://); the likelihood
    fit uses it when reachable (see :mod:`survey_estimator.fit.grid`)."""
    weights: dict[str, str] = field(default_factory=dict)
    """File name -> sha256 hex digest, filled by :meth:`ModelBundle.save`."""
    package_version: str = __version__
    format_version: int = BUNDLE_FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BundleError(f"manifest is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise BundleError("manifest is not a JSON object")
        if data.get("format_version") != BUNDLE_FORMAT:
            raise BundleError(f"bundle format {data.get('format_version')!r} is not {BUNDLE_FORMAT}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise BundleError(f"manifest lacks {missing}")
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Prediction:
    """Physical-unit predictions for B spectra, label order ``label_names`` (numpy, float64).

    Attributes:
        mean: (B, 4) K, dex, dex, km/s.
        sigma_raw: (B, 4) marginal 1-sigma from the network.
        sigma: (B, 4) calibrated 1-sigma (sigma_raw times the bundle's calibration factors).
        covariance: (B, 4, 4) calibrated covariance.
    """

    mean: np.ndarray
    sigma_raw: np.ndarray
    sigma: np.ndarray
    covariance: np.ndarray
    label_names: tuple[str, ...] = LABEL_NAMES


def git_commit() -> str:
    """The commit of the source tree this package runs from, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_weights(model: nn.Module, path: Path, arch: str) -> str:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"architecture": arch})
    return _sha256(path)


def max_file_bytes(name: str) -> int:
    """The size limit of bundle file ``name``: :data:`MAX_MANIFEST_BYTES` or :data:`MAX_WEIGHTS_BYTES`."""
    return MAX_MANIFEST_BYTES if name == MANIFEST else MAX_WEIGHTS_BYTES


def bundle_member(folder: str | Path, name: str) -> Path:
    """``folder/name`` for one of :data:`BUNDLE_FILES`; refuses any other name, in particular one
    with path components (``../x``, ``a/b``, absolute paths) that would leave ``folder``."""
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if name not in BUNDLE_FILES or target.parent != root:
        raise BundleError(f"{name!r} is not a bundle file name (expected one of {list(BUNDLE_FILES)})")
    return target


def check_config(what: str, config: Any) -> None:
    """Refuse a network config (from a manifest) beyond sane sizes: a dict of at most
    :data:`MAX_CONFIG_ITEMS` keys whose values are strings (<= 64 characters), booleans, finite
    numbers (integers within +-:data:`MAX_CONFIG_INT`), None or flat lists of those (<=
    :data:`MAX_CONFIG_ITEMS` items). Raises :class:`BundleError`."""
    def scalar(key: str, v: Any) -> None:
        ok = (v is None or isinstance(v, bool) or (isinstance(v, str) and len(v) <= 64)
              or (isinstance(v, int) and abs(v) <= MAX_CONFIG_INT)
              or (isinstance(v, float) and math.isfinite(v)))
        if not ok:
            raise BundleError(f"{what} config value {key}={str(v)[:40]!r} is out of bounds")

    if not isinstance(config, dict) or len(config) > MAX_CONFIG_ITEMS:
        raise BundleError(f"{what} config must be a JSON object of at most {MAX_CONFIG_ITEMS} keys")
    for key, v in config.items():
        if isinstance(v, list):
            if len(v) > MAX_CONFIG_ITEMS:
                raise BundleError(f"{what} config list {key} has more than {MAX_CONFIG_ITEMS} items")
            for item in v:
                scalar(key, item)
        else:
            scalar(key, v)


def _safetensors_elements(path: Path) -> int:
    """Total tensor elements a safetensors file declares in its header (read without loading it)."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= MAX_MANIFEST_BYTES * 16:
            raise BundleError(f"{path.name} is not a safetensors file")
        try:
            header = json.loads(f.read(n))
            return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise BundleError(f"{path.name} has an unreadable safetensors header: {e}") from e


def _load_weights(model: nn.Module, path: Path, sha256: str | None) -> None:
    """Load ``path`` into ``model`` after checking its size, its declared size and its checksum."""
    if not path.is_file():
        raise BundleError(f"{path.name} is missing from the bundle")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise BundleError(f"the manifest has no SHA-256 checksum for {path.name}: the bundle is refused")
    if path.stat().st_size > max_file_bytes(path.name):
        raise BundleError(f"{path.name} is larger than {max_file_bytes(path.name)} bytes")
    if _sha256(path) != sha256:
        raise BundleError(f"{path.name} does not match the checksum in the manifest")
    if _safetensors_elements(path) > MAX_PARAMETERS:
        raise BundleError(f"{path.name} holds more than {MAX_PARAMETERS} values")
    try:
        state = load_file(str(path), device="cpu")
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise BundleError(f"cannot load {path.name}: {e}") from e


def _dae_entry(dae: nn.Module | None) -> dict[str, Any] | None:
    """The manifest's ``dae`` entry for a denoiser (None for no DAE); refuses an estimator."""
    if dae is None:
        return None
    arch, config = describe(dae)
    if architecture(arch).estimator:
        raise ModelConfigError(f"{arch} is not a denoiser")
    return {"architecture": arch, "config": config}


def read_manifest(folder: str | Path) -> Manifest:
    """The :class:`Manifest` of the bundle in ``folder``; refuses a missing, oversized
    (> :data:`MAX_MANIFEST_BYTES`) or malformed manifest.json."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleError(f"no {MANIFEST} in {folder}")
    if path.stat().st_size > max_file_bytes(MANIFEST):
        raise BundleError(f"{MANIFEST} in {folder} is larger than {max_file_bytes(MANIFEST)} bytes")
    m = Manifest.from_json(path.read_text())
    if not isinstance(m.weights, dict):
        raise BundleError("manifest weights must map file names to SHA-256 digests")
    return m


def fetch_bundle(fetch: Callable[[str, Path], None], dst: str | Path) -> Path:
    """Copy a bundle from a store into folder ``dst``: only :data:`BUNDLE_FILES`, nothing else.

    ``fetch(name, target)`` writes the store's file ``name`` (one of :data:`BUNDLE_FILES`) to the
    local path ``target`` (always ``dst/name``, see :func:`bundle_member`); it may raise for a
    missing file. The manifest comes first (size-checked by :func:`read_manifest`), then the
    estimator's weights and, when the manifest has a DAE, the DAE's. Other objects under the
    bundle's prefix (whatever their names, ``../`` included) are never fetched. Returns ``dst``.
    """
    d = Path(dst)
    d.mkdir(parents=True, exist_ok=True)
    fetch(MANIFEST, bundle_member(d, MANIFEST))
    manifest = read_manifest(d)
    for name in (ESTIMATOR_FILE, DAE_FILE) if manifest.dae else (ESTIMATOR_FILE,):
        fetch(name, bundle_member(d, name))
    return d


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ModelBundle:
    """Estimator (+ optional DAE) with the label scaling and manifest that make it usable alone.

    Build with :meth:`create` after training, persist with :meth:`save`, read with :meth:`load`,
    run with :meth:`predict`.
    """

    def __init__(self, estimator: nn.Module, manifest: Manifest, dae: nn.Module | None = None):
        self.estimator = estimator
        self.dae = dae
        self.manifest = manifest
        self.scaler = LabelScaler.from_dict(manifest.label_scaler)

    @classmethod
    def create(
        cls,
        estimator: nn.Module,
        *,
        name: str,
        preprocessing_version: str,
        grid_id: str,
        dae: nn.Module | None = None,
        scaler: LabelScaler | None = None,
        calibration: Mapping[str, float] | Sequence[float] | None = None,
        metrics: Mapping[str, Any] | None = None,
        commit: str | None = None,
        layout_version: str = LAYOUT_VERSION,
        label_range: Mapping[str, Sequence[float]] | None = None,
        grid_uri: str | None = None,
    ) -> "ModelBundle":
        """A bundle from trained networks (built by :mod:`.registry` classes) and their context."""
        arch, config = describe(estimator)
        if not architecture(arch).estimator:
            raise ModelConfigError(f"{arch} is not an estimator")
        manifest = Manifest(
            name=name,
            architecture=arch,
            config=config,
            head=config["head"],
            layout_version=layout_version,
            preprocessing_version=preprocessing_version,
            normalisation_version=NORMALISATION_VERSION,
            grid_id=grid_id,
            label_names=list(LABEL_NAMES),
            label_scaler=(scaler or LabelScaler()).to_dict(),
            calibration={n: 1.0 for n in LABEL_NAMES},
            git_commit=commit or git_commit(),
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            dae=_dae_entry(dae),
            metrics=dict(metrics or {}),
            label_range={k: [float(v) for v in label_range[k]] for k in LABEL_NAMES} if label_range else None,
            grid_uri=grid_uri,
        )
        bundle = cls(estimator, manifest, dae)
        if calibration is not None:
            bundle.set_calibration(calibration)
        return bundle

    @property
    def label_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo (4,), hi (4,)) physical label range the estimator knows, order ``LABEL_NAMES``."""
        if self.manifest.label_range:
            r = self.manifest.label_range
            return np.array([r[n][0] for n in LABEL_NAMES], float), np.array([r[n][1] for n in LABEL_NAMES], float)
        return LABEL_LO.copy(), LABEL_HI.copy()

    def with_dae(self, dae: nn.Module | None) -> "ModelBundle":
        """This bundle's estimator, scaling, calibration and range with ``dae`` in front (None: no DAE).

        The new bundle shares the estimator module; its manifest is a copy with the DAE entry
        replaced (weights checksums are rewritten by :meth:`save`)."""
        entry = _dae_entry(dae)
        if dae is not None:
            dae.to(self.device).eval()
        manifest = dataclasses.replace(self.manifest, dae=entry, weights={}, metrics=dict(self.manifest.metrics))
        return type(self)(self.estimator, manifest, dae)

    def apply_calibration(self, report) -> None:
        """Store an evaluation's fitted calibration factors and sigma limit (an
        :class:`~survey_estimator.evaluation.evaluate.EvaluationReport` with ``sigma_limit``)."""
        self.set_calibration(report.calibration.tolist())
        if report.sigma_limit is not None:
            self.manifest.sigma_limit = {n: float(v) for n, v in zip(LABEL_NAMES, report.sigma_limit)}

    @property
    def sigma_limits(self) -> np.ndarray | None:
        """(4,) :attr:`Manifest.sigma_limit` in ``LABEL_NAMES`` order, or None."""
        lim = self.manifest.sigma_limit
        return None if not lim else np.array([float(lim[n]) for n in LABEL_NAMES])

    # -- calibration and device -------------------------------------------------------------
    @property
    def sigma_scale(self) -> np.ndarray:
        """Per-label sigma factors (4,), label order ``LABEL_NAMES``."""
        return np.array([float(self.manifest.calibration[n]) for n in LABEL_NAMES])

    def set_calibration(self, scales: Mapping[str, float] | Sequence[float]) -> None:
        """Set the per-label sigma factors (dict by label name, or a sequence of 4)."""
        if isinstance(scales, Mapping):
            unknown = set(scales) - set(LABEL_NAMES)
            if unknown:
                raise ValueError(f"unknown labels {sorted(unknown)}")
            new = {**self.manifest.calibration, **{k: float(v) for k, v in scales.items()}}
        else:
            values = [float(v) for v in scales]
            if len(values) != len(LABEL_NAMES):
                raise ValueError(f"need {len(LABEL_NAMES)} factors, got {len(values)}")
            new = dict(zip(LABEL_NAMES, values))
        if not all(np.isfinite(v) and v > 0 for v in new.values()):
            raise ValueError(f"calibration factors must be positive and finite: {new}")
        self.manifest.calibration = new

    @property
    def device(self) -> torch.device:
        return next(self.estimator.parameters()).device

    def to(self, device: str | torch.device) -> "ModelBundle":
        self.estimator.to(device)
        if self.dae is not None:
            self.dae.to(device)
        return self

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write weights (safetensors) and manifest.json into ``directory`` (created); returns it."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        weights = {ESTIMATOR_FILE: _save_weights(self.estimator, d / ESTIMATOR_FILE, self.manifest.architecture)}
        if self.dae is not None:
            weights[DAE_FILE] = _save_weights(self.dae, d / DAE_FILE, "dae")
        elif (d / DAE_FILE).exists():
            (d / DAE_FILE).unlink()
        self.manifest.weights = weights
        tmp = d / (MANIFEST + ".tmp")
        tmp.write_text(self.manifest.to_json())
        tmp.replace(d / MANIFEST)
        log.info("saved bundle %s (%s) to %s", self.manifest.name, self.manifest.architecture, d)
        return d

    @classmethod
    def load(
        cls,
        directory: str | Path,
        expect_layout: str = LAYOUT_VERSION,
        expect_preprocessing: str | None = None,
        device: str | torch.device | None = None,
    ) -> "ModelBundle":
        """Read a bundle written by :meth:`save`, without unpickling anything.

        Args:
            directory: the bundle directory.
            expect_layout: layout version the caller's input is in (default: this code's).
            expect_preprocessing: preprocessing version the caller's input comes from; None
                skips that check (logged).
            device: where to put the networks (default: CUDA when available, else CPU).
        Raises:
            BundleError: missing/corrupt files, a weights file without its checksum, a manifest,
                config or weights file beyond the size limits, or a layout, normalisation,
                preprocessing, label-name or format mismatch.
        """
        d = Path(directory)
        m = read_manifest(d)
        if m.layout_version != expect_layout:
            raise BundleError(f"bundle layout {m.layout_version!r} differs from the expected {expect_layout!r}")
        if m.normalisation_version != NORMALISATION_VERSION:
            raise BundleError(f"bundle normalisation {m.normalisation_version!r} differs from this code's {NORMALISATION_VERSION!r}")
        if expect_preprocessing is None:
            log.warning("preprocessing version not checked (bundle has %r)", m.preprocessing_version)
        elif m.preprocessing_version != expect_preprocessing:
            raise BundleError(f"bundle preprocessing {m.preprocessing_version!r} differs from the expected {expect_preprocessing!r}")
        if list(m.label_names) != list(LABEL_NAMES) or set(m.calibration) != set(LABEL_NAMES):
            raise BundleError(f"bundle labels {m.label_names} differ from {list(LABEL_NAMES)}")
        check_config(m.architecture, m.config)
        if m.dae is not None:
            if not isinstance(m.dae, dict):
                raise BundleError("manifest dae entry must be a JSON object")
            check_config("dae", m.dae.get("config"))
        try:
            LabelScaler.from_dict(m.label_scaler)
            if not architecture(m.architecture).estimator:
                raise ModelConfigError(f"{m.architecture} is not an estimator")
            estimator = build_model(m.architecture, m.config)
            if estimator.head_kind != m.head:
                raise ModelConfigError(f"head {m.head!r} differs from the config's {estimator.head_kind!r}")
            dae = build_model(m.dae["architecture"], m.dae["config"]) if m.dae else None
        except (ModelConfigError, ValueError, KeyError, TypeError) as e:
            raise BundleError(f"cannot rebuild the networks of {d}: {e}") from e
        _load_weights(estimator, d / ESTIMATOR_FILE, m.weights.get(ESTIMATOR_FILE))
        if dae is not None:
            _load_weights(dae, d / DAE_FILE, m.weights.get(DAE_FILE))
        bundle = cls(estimator, m, dae).to(device or _default_device())
        log.info("loaded bundle %s (%s, grid %s, commit %s)", m.name, m.architecture, m.grid_id, m.git_commit[:12])
        return bundle

    # -- inference ----------------------------------------------------------------------------
    def predict(self, x: np.ndarray | torch.Tensor, use_dae: bool = True, batch_size: int = 64) -> Prediction:
        """Labels with uncertainties for model input ``x`` (B, 2, 8, 4096) (``normalise.model_input``).

        Runs under ``torch.inference_mode`` on the bundle's device in batches of ``batch_size``
        (networks in eval mode, their previous mode restored after); the DAE is applied first
        when ``use_dae`` and the bundle has one.
        """
        x = _model_input(x)
        with self._inference():
            batches = [self._predict_batch(x[i : i + batch_size], use_dae) for i in range(0, x.shape[0], batch_size)]
        if not batches:
            k = len(LABEL_NAMES)
            return Prediction(np.zeros((0, k)), np.zeros((0, k)), np.zeros((0, k)), np.zeros((0, k, k)))
        return Prediction(*(np.concatenate(parts) for parts in zip(*batches)))

    def attention_maps(self, x: np.ndarray | torch.Tensor, use_dae: bool = True) -> np.ndarray:
        """The attention estimator's maps for model input ``x`` (B, 2, 8, 4096): (B, 3, 8, 4096)
        float32, each block's map non-negative and summing to 1 over the 8 x 4096 positions.

        Raises:
            ValueError: the estimator has no attention maps (not the ``attention`` architecture).
        """
        if getattr(self.estimator, "architecture", None) != "attention":
            raise ValueError(f"a {self.manifest.architecture} estimator has no attention maps")
        x = _model_input(x)
        with self._inference():
            xb = x.to(device=self.device, dtype=torch.float32)
            if use_dae and self.dae is not None:
                xb = self.dae.denoise(xb)
            _, maps = self.estimator(xb, return_attention=True)
        return maps.float().cpu().numpy()

    @contextlib.contextmanager
    def _inference(self):
        """The networks in eval mode under ``torch.inference_mode``; their modes restored after."""
        nets = [n for n in (self.estimator, self.dae) if n is not None]
        modes = [n.training for n in nets]
        for n in nets:
            n.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            for n, mode in zip(nets, modes):
                n.train(mode)

    def _predict_batch(self, xb: torch.Tensor, use_dae: bool) -> tuple[np.ndarray, ...]:
        """(mean, sigma_raw, sigma, covariance) as float64 numpy for one batch."""
        xb = xb.to(device=self.device, dtype=torch.float32)
        if use_dae and self.dae is not None:
            xb = self.dae.denoise(xb)
        out = self.estimator(xb)
        out = type(out)(out.mean.double(), out.scale_tril.double())
        raw = to_physical(out, self.scaler)
        cal = to_physical(out, self.scaler, sigma_scale=self.sigma_scale)
        return tuple(t.cpu().numpy() for t in (raw.mean, raw.sigma, cal.sigma, cal.covariance))


def _model_input(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``x`` as a tensor, checked to be (B, 2, orders, pixels)."""
    x = torch.as_tensor(x)
    if x.ndim != 4 or x.shape[1] != 2:
        raise ValueError(f"model input must be (B, 2, orders, pixels), got {tuple(x.shape)}")
    return x
