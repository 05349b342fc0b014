"""The grid-build job: Ray sharding, resumability, missing and failed nodes, manifest provenance,
s3:// stores (moto server) and the command line. Analytic backend: seconds, not hours."""
from __future__ import annotations

import numpy as np
import pytest

from survey_estimator.synth.analytic import AnalyticBackend
from survey_estimator.synth.backend import FAST_SETTINGS, REFERENCE_SETTINGS, BackendConfig, fine_wave
from survey_estimator.synth.build import (BuildConfig, GridRanges, build_grid, pending_nodes, shards,
                                          synthesize_nodes)
from survey_estimator.synth.store import GridStore, node_key
from survey_estimator.storage import StorageError

ANALYTIC = BackendConfig(name="analytic")


def _config(out, teff=(5500, 6000), logg=(4.0, 4.5), mh=(0.0, 0.0), **kw) -> BuildConfig:
    kw.setdefault("num_cpus", 2)
    return BuildConfig(out=str(out), backend=kw.pop("backend", ANALYTIC), ranges=GridRanges(teff, logg, mh),
                       nodes_per_task=2, progress=False, **kw)


def test_ranges_select_table1_nodes():
    nodes = GridRanges((4000, 4500), (4.0, 5.0), (-0.5, 0.0)).nodes()
    assert len(nodes) == 3 * 3 * 2 and nodes[0] == (4000.0, 4.0, -0.5) and nodes[-1] == (4500.0, 5.0, 0.0)
    assert len(GridRanges().nodes()) == 26 * 11 * 7
    with pytest.raises(ValueError, match="holds no node"):
        GridRanges((3000, 3400)).nodes()
    assert [len(s) for s in shards(nodes, 4)] == [4, 4, 4, 4, 2]


def test_resumable_build_on_ray_skips_finished_nodes(ray_cluster, tmp_path):
    out = tmp_path / "grid"
    first = build_grid(_config(out, teff=(5500, 5750)))  # 2 x 2 nodes
    assert sorted(first.synthesised) == sorted(node_key(*n) for n in GridRanges((5500, 5750), (4.0, 4.5), (0, 0)).nodes())
    assert first.ok == 4 and first.skipped == 0
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "nodes").iterdir()}

    # an interrupted build: one finished node lost its record, the range grew by one Teff column
    (out / "nodes" / f"{node_key(5500, 4.5, 0.0)}.json").unlink()
    second = build_grid(_config(out, teff=(5500, 6000)))
    assert sorted(second.synthesised) == sorted([node_key(5500, 4.5, 0.0), node_key(6000, 4.0, 0.0), node_key(6000, 4.5, 0.0)])
    assert second.skipped == 3 and second.ok == 3
    for name, t in mtimes.items():  # finished nodes were not rewritten
        if not name.startswith(node_key(5500, 4.5, 0.0)):
            assert (out / "nodes" / name).stat().st_mtime_ns == t

    third = build_grid(_config(out, teff=(5500, 6000)))
    assert third.synthesised == [] and third.skipped == 6

    dense = GridStore(str(out)).load_dense()
    assert dense.valid.all() and dense.flux.shape == (3, 2, 1, fine_wave().size)
    np.testing.assert_array_equal(dense.flux[1, 0, 0], AnalyticBackend().synthesize(5750, 4.0, 0.0))


def test_missing_nodes_are_recorded_not_faked(tmp_path):
    out = tmp_path / "grid"
    report = build_grid(_config(out, teff=(7750, 8250), logg=(0.5, 1.5), use_ray=False))
    assert (report.ok, report.missing, report.failed) == (5, 4, 0)
    store = GridStore(str(out))
    rows = {r["key"]: r for r in store.node_table().to_pylist()}
    hole = rows[node_key(8000, 1.0, 0.0)]
    assert hole["status"] == "missing" and "no model atmosphere" in hole["reason"]
    assert not (out / "nodes" / f"{node_key(8000, 1.0, 0.0)}.npy").exists()
    dense = store.load_dense()
    assert not dense.valid[1, 0, 0] and np.isnan(dense.flux[1, 0, 0]).all()
    assert dense.valid[0].all() and dense.valid[:, 2].all()
    # missing nodes count as finished: a rerun does not retry them
    assert pending_nodes(store, GridRanges((7750, 8250), (0.5, 1.5), (0, 0)).nodes()) == []


def test_failed_nodes_keep_their_reason_and_are_retried(tmp_path):
    results = synthesize_nodes(BackendConfig(name="nope"), [(5000.0, 4.0, 0.0), (5250.0, 4.0, 0.0)])
    assert [r.status for r in results] == ["failed", "failed"]
    assert "unknown synthesis backend" in results[0].reason

    out = tmp_path / "grid"
    build_grid(_config(out, use_ray=False))
    store = GridStore(str(out))
    store.write_node(5500, 4.0, 0.0, None, status="failed", reason="worker died")
    nodes = GridRanges((5500, 6000), (4.0, 4.5), (0, 0)).nodes()
    assert pending_nodes(store, nodes) == [(5500.0, 4.0, 0.0)]
    assert pending_nodes(store, nodes, retry_failed=False) == []
    again = build_grid(_config(out, use_ray=False))
    assert again.synthesised == [node_key(5500, 4.0, 0.0)] and again.ok == 1
    assert store.read_record(node_key(5500, 4.0, 0.0))["status"] == "ok"


def test_manifest_records_provenance_and_refuses_other_physics(tmp_path):
    out = tmp_path / "grid"
    build_grid(_config(out, use_ray=False))
    m = GridStore(str(out)).manifest
    assert m["backend"] == "analytic" and m["vmic_kms"] == 1.0 and m["molecules"] is True
    assert m["resolution"] == 115000.0 and m["vsini_kms"] == 0.0
    assert m["wave"]["n"] == fine_wave().size and m["wave"]["velocity_step_kms"] == 0.5 and m["wave"]["medium"] == "air"
    for dist in ("survey-estimator", "numpy", "pysme-astro", "ray"):
        assert m["code_versions"][dist], dist
    assert m["layout_version"] and len(m["grid_id"]) == 12
    with pytest.raises(StorageError, match="other settings"):
        build_grid(_config(out, use_ray=False, backend=BackendConfig(name="analytic", vmic_kms=2.0)))


def test_synthesis_settings_are_recorded_but_not_hashed_into_the_grid_id(tmp_path):
    """Accuracy settings change neither the grid id nor finished nodes; the manifest names the
    current settings (earlier ones in its history) and every 'ok' node record those that made it."""
    out = tmp_path / "grid"
    ref = BackendConfig(name="analytic", synthesis=REFERENCE_SETTINGS)
    first = build_grid(_config(out, teff=(5500, 5500), use_ray=False, backend=ref))
    fast = BackendConfig(name="analytic", synthesis=FAST_SETTINGS)
    again = build_grid(_config(out, teff=(5500, 6000), use_ray=False, backend=fast))
    assert again.grid_id == first.grid_id and again.skipped == 2
    store = GridStore(str(out))
    m = store.manifest
    assert m["grid_id"] == first.grid_id and m["synthesis_settings"] == FAST_SETTINGS.describe()
    assert m["synthesis_settings_history"][0]["synthesis_settings"] == REFERENCE_SETTINGS.describe()
    records = {k: store.read_record(k) for k in store.finished_keys()}
    ok = {k: r for k, r in records.items() if r["status"] == "ok"}
    assert ok and all(r["cpu_seconds"] >= 0 for r in ok.values())
    for k, r in ok.items():
        want = REFERENCE_SETTINGS if r["teff"] == 5500 else FAST_SETTINGS
        assert r["synthesis_settings"] == want.describe(), k
    build_grid(_config(out, teff=(5500, 6000), use_ray=False, backend=fast))  # same settings: no new history
    assert len(GridStore(str(out)).manifest["synthesis_settings_history"]) == 1


def test_build_to_s3_and_read_back(ray_cluster, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/grids/tiny"
    report = build_grid(_config(uri, teff=(5500, 5750), logg=(4.5, 4.5)))
    assert report.ok == 2
    again = build_grid(_config(uri, teff=(5500, 5750), logg=(4.5, 4.5)))
    assert again.synthesised == [] and again.skipped == 2
    dense = GridStore(uri).load_dense()
    assert dense.flux.shape == (2, 1, 1, fine_wave().size)
    np.testing.assert_array_equal(dense.flux[0, 0, 0], AnalyticBackend().synthesize(5500, 4.5, 0.0))
    assert GridStore(uri).manifest["grid_id"] == report.grid_id


def test_command_line_and_job_script(ray_cluster, tmp_path, capsys):
    from survey_estimator.cli import run_command

    out = tmp_path / "cli-grid"
    args = ["--backend", "analytic", "--out", str(out), "--teff", "6000", "6250", "--logg", "4.5", "4.5",
            "--mh", "-0.5", "0", "--vmic", "1.5", "--no-molecules", "--num-cpus", "2", "--no-progress"]
    assert run_command("build-grid", args) == 0
    assert "4 ok, 0 missing, 0 failed" in capsys.readouterr().out
    m = GridStore(str(out)).manifest
    assert m["vmic_kms"] == 1.5 and m["molecules"] is False
    assert len(GridStore(str(out)).finished_keys()) == 4

    import subprocess
    import sys
    from pathlib import Path

    job = Path(__file__).parents[1] / "jobs" / "build_grid.py"
    proc = subprocess.run([sys.executable, str(job), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 already done" in proc.stdout  # resumed, so no Ray cluster was even needed
