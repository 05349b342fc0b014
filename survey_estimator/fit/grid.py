"""Where the fit's grid comes from: one resolver for ``estimate``, the catalogue and evaluation.

In order: an explicit URI (``--grid``: a store folder, ``s3://`` store or packed ``.npz``); the
store the model bundle records (``grid_uri`` in its manifest) when it is reachable; then, for the
bundle's grid id and, first, the grids that superseded it (:data:`SUPERSEDED`), the packed grid
shipped in ``survey_estimator/data/grids/<grid_id>.npz`` (small and always the same) and a
finished store with that grid id under ``<cache>/grids/``. A larger build of the same physics
(e.g. the full Table-1 grid) is used by naming it with ``--grid``. None when nothing matches: the
network's estimate is then the result (``method`` = "network") and a warning says why.
"""
from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)


def shipped_grid(grid_id: str) -> str | None:
    """Path of the packed grid shipped for ``grid_id``, or None."""
    path = resources.files("survey_estimator.data").joinpath("grids").joinpath(f"{grid_id}.npz")
    return str(path) if path.is_file() else None


def interpolation_error(grid_id: str):
    """(4,) measured 1-sigma interpolation error of grid ``grid_id`` (Teff K, log g, [M/H] dex,
    v sin i km/s), or None when it was never measured.

    Read from ``survey_estimator/data/grids/<grid_id>.interpolation.json``, written from
    ``evaluate --between-nodes`` (the rms label error of noiseless fits of PySME spectra
    synthesised between the nodes; see docs/fit.md). It holds for any store of that physics with
    the Table-1 node spacing."""
    import numpy as np

    from ..labels import LABEL_NAMES

    path = resources.files("survey_estimator.data").joinpath("grids").joinpath(f"{grid_id}.interpolation.json")
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return np.array([float(record["rms"][n]) for n in LABEL_NAMES])


def default_grid() -> str | None:
    """The packed grid shipped with the package: the fgk-dwarfs nodes of the current physics (the
    shipped network was trained on the full grid of that physics; bundles trained on the grid it
    superseded reach it through :data:`SUPERSEDED`)."""
    folder = resources.files("survey_estimator.data").joinpath("grids")
    found = sorted(str(f) for f in folder.iterdir() if f.name.endswith(".npz")) if folder.is_dir() else []
    return found[0] if found else None


def _cached_store(grid_id: str) -> str | None:
    from ..synth.sources import cache_dir

    root = cache_dir() / "grids"
    for manifest in sorted(root.glob("*/manifest.json")) if root.is_dir() else []:
        try:
            same = json.loads(manifest.read_text()).get("grid_id") == grid_id
        except (OSError, ValueError):
            continue
        if same and (manifest.parent / "nodes.parquet").is_file():
            return str(manifest.parent)
    return None


def _reachable(uri: str) -> bool:
    from ..storage import StorageError, resolve

    if uri.endswith(".npz"):
        return Path(uri).is_file()
    try:
        return resolve(uri).join("manifest.json").exists()
    except (StorageError, OSError, ValueError):
        return False


SUPERSEDED = {
    "49b7d6d59246": "d9572496c88b",
}
"""Grid id -> the id of the grid whose corrected physics replaced it (same nodes, settings and
sources but for the correction). 49b7d6d59246 -> d9572496c88b: linemake's CH B-X lines, whose gf
values are wrong, dropped (``synth.sources.DROPPED_CH_SYSTEMS``; docs/grid.md measures what it
changed on real stars). A network trained on the old grid is only the fit's first guess, so its
fit uses the corrected grid when one is reachable."""


def successors(grid_id: str) -> list[str]:
    """``grid_id``'s grid and the grids that superseded it, newest first."""
    chain = [grid_id]
    while chain[-1] in SUPERSEDED and SUPERSEDED[chain[-1]] not in chain:
        chain.append(SUPERSEDED[chain[-1]])
    return chain[::-1]


def resolve_grid(grid_id: str | None, explicit: str | None = None, recorded: str | None = None) -> str | None:
    """The grid URI the fit should use (see the module docstring), or None."""
    if explicit:
        return explicit
    if recorded and _reachable(recorded):
        return recorded
    for gid in successors(grid_id) if grid_id else []:
        for found in (shipped_grid(gid), _cached_store(gid)):
            if found:
                return found
    log.warning("no grid with id %s is reachable (give --grid): estimates come from the network alone", grid_id)
    return None


def load_forward_model(uri: str, device: str = "cpu", progress: bool = True):
    """The :class:`~survey_estimator.forward.ForwardModel` of a grid URI (store or packed .npz)."""
    from ..forward import ForwardModel

    return ForwardModel.from_grid(uri, device=device, progress=progress)
