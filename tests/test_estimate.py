"""`survey-estimator estimate`: catalogue rows for files on disk, and default-model resolution.

Real FITS from tests/data (HARPS e2ds with its blaze, ESO ADP table, a truncated e2ds), a real
tiny untrained bundle, a real sqlite MLflow registry.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from catalogue_testing import save_tiny_bundle
from survey_estimator.models.resolve import ModelNotFoundError, resolve_model
from survey_estimator.catalogue.schema import COLUMN_NAMES, CatalogueFlag
from survey_estimator.cli import run_command
from survey_estimator.models import resolve
from survey_estimator.preprocess import Flag

DATA = Path(__file__).parent / "data"
E2DS = DATA / "HARPS.2003-12-13T06-19-48.371_e2ds_A.fits"
BLAZE = DATA / "HARPS.2003-12-12T21-42-45.093_blaze_A.fits"
ADP = DATA / "ADP.2014-09-16T11-04-45.123.4900-5500.fits"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return Path(save_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny"))


@pytest.fixture
def broken(tmp_path):
    """A real e2ds cut to its first 20 kB: a truncated FITS file."""
    path = tmp_path / "HARPS.2003-12-14T01-00-00.000_e2ds_A.fits"
    path.write_bytes(E2DS.read_bytes()[:20000])
    return path


@pytest.fixture
def no_defaults(tmp_path, monkeypatch):
    """No shipped bundle (an empty folder stands in for the package's) and no registry store."""
    empty = tmp_path / "shipped"
    empty.mkdir()
    monkeypatch.setenv(resolve.BUNDLE_ENV, str(empty))
    db = tmp_path / "registry" / "mlflow.db"
    db.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    return empty, db


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_json_rows_have_the_catalogue_columns_and_bad_files_become_error_rows(bundle, broken, capsys):
    rc = run_command("estimate", ["--json", "--model", str(bundle), str(E2DS), str(ADP), str(broken)])
    rows = _json_lines(capsys.readouterr().out)
    assert rc == 1  # one error row
    assert [r["source_uri"] for r in rows] == [str(E2DS), str(ADP), str(broken)]
    for r in rows:
        assert tuple(r) == COLUMN_NAMES
        assert r["model_name"] == "tiny-test" and len(r["model_version"]) == 12
    e2ds, adp, bad = rows
    for r in (e2ds, adp):
        assert r["status"] == "ok" and r["error"] is None
        assert all(isinstance(r[k], float) for k in ("teff", "teff_err", "logg", "mh", "vsini", "snr"))
        assert len(r["cov"]) == 16
        assert not r["flags"] & int(CatalogueFlag.READ_ERROR)
    assert e2ds["instrument"] == "HARPS" and e2ds["object"] == "Gl273"
    assert not e2ds["flags"] & int(Flag.BLAZE_MISSING)  # the blaze beside it was found and applied
    assert adp["object"] == "IC4651No9122"
    assert bad["status"] == "error" and bad["flags"] == int(CatalogueFlag.READ_ERROR)
    assert broken.name in bad["error"] and "truncated" in bad["error"]
    assert all(bad[k] is None for k in ("teff", "teff_err", "cov", "snr"))


def test_table_output_and_exit_0_when_all_rows_are_ok(bundle, capsys):
    rc = run_command("estimate", ["--model", str(bundle), "--no-dae", str(ADP)])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert lines[0].split() == list(COLUMN_NAMES)
    assert len(lines) == 2
    row = lines[1]
    assert row.startswith(str(ADP))
    # aligned: every column starts where its header starts
    for name in ("teff", "status", "model_name"):
        start = lines[0].index(f"  {name} ") + 2
        assert row[start - 2 : start] == "  " and row[start] != " "
    assert " ok " in row


def test_blaze_option_and_missing_blaze(bundle, tmp_path, capsys):
    alone = tmp_path / E2DS.name  # the e2ds without its blaze beside it
    shutil.copy(E2DS, alone)
    assert run_command("estimate", ["--json", "--model", str(bundle), str(alone)]) == 0
    (without,) = _json_lines(capsys.readouterr().out)
    assert without["flags"] & int(Flag.BLAZE_MISSING)
    assert run_command("estimate", ["--json", "--model", str(bundle), "--blaze", str(BLAZE), str(alone)]) == 0
    (with_blaze,) = _json_lines(capsys.readouterr().out)
    assert not with_blaze["flags"] & int(Flag.BLAZE_MISSING)
    assert with_blaze["snr"] != without["snr"]
    assert run_command("estimate", ["--model", str(bundle), "--blaze", str(tmp_path / "nope.fits"), str(alone)]) == 2
    assert "nope.fits does not exist" in capsys.readouterr().err


def test_no_model_anywhere_is_a_clear_error(no_defaults, capsys):
    _, db = no_defaults
    rc = run_command("estimate", [str(ADP)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no model to run" in err and "survey-estimator register" in err and "--model" in err
    assert "Traceback" not in err
    assert not db.exists()  # looking for a default does not create an empty registry
    with pytest.raises(ModelNotFoundError, match="no shipped bundle"):
        resolve_model(None)


def test_unknown_model_folder_and_remote_files_exit_2(bundle, tmp_path, capsys):
    assert run_command("estimate", ["--model", str(tmp_path / "none"), str(ADP)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_command("estimate", ["--model", str(bundle), "s3://archive/x.fits"]) == 2
    assert "reads local files" in capsys.readouterr().err


def test_default_resolution_order_shipped_then_registry(bundle, no_defaults, tmp_path, capsys):
    empty, db = no_defaults
    # the README story: a bundle shipped in a production folder, registered with one command
    production = tmp_path / "production"
    shutil.copytree(bundle, production)
    shutil.copy(resolve.PRODUCTION_DIR / "README.md", production / "README.md")
    other = Path(save_tiny_bundle(tmp_path / "other", name="tiny-other", seed=1))
    assert run_command("register", [str(other), "--alias", "candidate", "--tracking-uri", f"sqlite:///{db}"]) == 0
    with pytest.raises(ModelNotFoundError, match="no model to run.*stellar-estimator@production"):
        resolve_model(None)  # a registry without the production alias is no default either
    assert run_command("register", [str(production), "--alias", "production", "--tracking-uri", f"sqlite:///{db}"]) == 0
    capsys.readouterr()

    ref = resolve_model(None)  # nothing shipped: the registry's production version
    assert (ref.spec, ref.name, ref.version) == ("models:/stellar-estimator/2", "stellar-estimator", "2")
    assert run_command("estimate", ["--json", str(ADP)]) == 0
    (row,) = _json_lines(capsys.readouterr().out)
    assert (row["model_name"], row["model_version"], row["status"]) == ("stellar-estimator", "2", "ok")

    shutil.copytree(other, empty, dirs_exist_ok=True)  # now a bundle is shipped: it wins over the registry
    assert resolve.default_bundle_path() == empty.resolve()
    ref = resolve_model(None)
    assert (ref.spec, ref.name) == (str(empty.resolve()), "tiny-other")
    assert run_command("estimate", ["--json", str(ADP)]) == 0
    (row,) = _json_lines(capsys.readouterr().out)
    assert row["model_name"] == "tiny-other" and row["model_version"] == ref.version


def test_catalogue_job_uses_the_same_default(bundle, no_defaults, tmp_path):
    from survey_estimator.catalogue.pipeline import CatalogueConfig, prepare

    empty, _ = no_defaults
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(ADP, archive / ADP.name)
    config = CatalogueConfig(archive=str(archive), out=str(tmp_path / "cat"))
    with pytest.raises(ModelNotFoundError, match="no model to run"):
        prepare(config)
    shutil.copytree(bundle, empty, dirs_exist_ok=True)
    ref, todo, _, summary = prepare(config)
    assert ref.spec == str(empty.resolve()) and summary.model_name == "tiny-test"
    assert [Path(f.uri).name for f in todo] == [ADP.name]


def test_package_production_folder_is_documented():
    readme = resolve.PRODUCTION_DIR / "README.md"
    assert readme.is_file() and "manifest.json" in readme.read_text()
    assert resolve.PRODUCTION_MODEL == "models:/stellar-estimator@production"


def test_real_star_check_beside_literature_with_the_models_range(tmp_path, capsys):
    """evaluate --real-stars runs the catalogue's reading code on the real files (HD 41248 S2D,
    Gl 273 e2ds with its blaze, Gl 581 s1d) and flags estimates outside the model's own range."""
    hot_only = {"teff": [9000, 9750], "logg": [0, 5], "mh": [-2.5, 0.5], "vsini": [0, 30]}
    model = save_tiny_bundle(tmp_path / "hot", label_range=hot_only)
    rc = run_command("evaluate", ["--model", str(model), "--real-stars", str(DATA), "--out", str(tmp_path / "ev"), "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| HD 41248 (G2V, inside the grid) | HD41248_1_1_S2D_A.rows80-95.fits.gz |" in out
    rows = json.loads((tmp_path / "ev" / "real_stars.json").read_text())
    assert [r["star"] for r in rows] == ["HD 41248", "Gl 273", "Gl 581"]
    assert [r["lit_teff"] for r in rows] == [5710, 3380, 3450]
    assert all(r["status"] == "ok" and r["teff"] < 9000 and "OUTSIDE_GRID" in r["flags"] for r in rows), rows
    assert (tmp_path / "ev" / "real_stars.md").read_text().count("OUTSIDE_GRID") == 3


def test_attention_maps_of_a_real_star_are_drawn_and_logged_to_mlflow(tmp_path, monkeypatch, capsys):
    """An attention model's three maps under a real spectrum (HD 41248's S2D here: no Sun in
    tests/data), their share on Mg b, the PNG and the figures in a real MLflow store."""
    import mlflow

    model = save_tiny_bundle(tmp_path / "att", name="tiny-attention", architecture="attention")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    ev = tmp_path / "ev"
    rc = run_command("evaluate", ["--model", str(model), "--real-stars", str(DATA), "--out", str(ev), "--device", "cpu",
                                  "--log", "--experiment", "test-attention"])
    assert rc == 0
    assert "attention maps of HD41248_1_1_S2D_A.rows80-95.fits.gz" in capsys.readouterr().out
    att = json.loads((ev / "attention_real.json").read_text())
    assert att["file"] == "HD41248_1_1_S2D_A.rows80-95.fits.gz" and att["png"] == "attention_real.png"
    assert len(att["mgb"]["share"]) == 3 and all(0 < s < 1 for s in att["mgb"]["share"])
    assert (ev / "attention_real.png").stat().st_size > 20_000
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("test-attention").experiment_id])
    assert {"evaluation/attention_real.png", "evaluation/attention_real.json"} <= {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert run.data.metrics["real/attention_mgb_enrichment_block2"] == pytest.approx(att["mgb"]["enrichment"][1])


def test_evaluate_needs_a_grid_or_real_stars_and_a_real_dae_checkpoint(bundle, tmp_path, capsys):
    assert run_command("evaluate", ["--model", str(bundle)]) == 2
    assert "--real-stars" in capsys.readouterr().err
    assert run_command("evaluate", ["--model", str(bundle), "--real-stars", str(DATA), "--dae-checkpoint", str(tmp_path)]) == 2
    assert "is not a training checkpoint folder" in capsys.readouterr().err


def test_inspect_and_estimate_find_the_same_blaze(bundle, tmp_path, capsys):
    """The blaze named by DRS BLAZE FILE sits in the previous night's folder: inspect and estimate
    both find it through the one lookup (estimate once reported it missing)."""
    night, previous = tmp_path / "2003-12-13", tmp_path / "2003-12-12"
    night.mkdir(), previous.mkdir()
    shutil.copy(E2DS, night / E2DS.name)
    shutil.copy(BLAZE, previous / BLAZE.name)
    assert run_command("inspect", ["--json", str(night / E2DS.name)]) == 0
    seen = json.loads(capsys.readouterr().out)
    assert run_command("estimate", ["--json", "--no-fit", "--model", str(bundle), str(night / E2DS.name)]) == 0
    (row,) = _json_lines(capsys.readouterr().out)
    assert seen["blaze_corrected"] and not seen["flags"] & int(Flag.BLAZE_MISSING)
    assert not row["flags"] & int(Flag.BLAZE_MISSING)
    assert row["flags"] & 0xFFFFFFFF == seen["flags"] and row["snr"] == pytest.approx(seen["snr"], rel=1e-6)


def test_overrides_reach_the_estimate(bundle, capsys):
    hd122563 = DATA / "hd122563.5095-5255.fits"  # nothing in its header: instrument, R, medium, frame assumed
    assert run_command("estimate", ["--json", "--no-fit", "--model", str(bundle), str(hd122563)]) == 0
    (assumed,) = _json_lines(capsys.readouterr().out)
    assert run_command("estimate", ["--json", "--no-fit", "--model", str(bundle), "--instrument", "HARPS", "--frame", "rest",
                                    "--medium", "air", str(hd122563)]) == 0
    (given,) = _json_lines(capsys.readouterr().out)
    assert assumed["instrument"] == "unknown" and given["instrument"] == "HARPS"
    for flag in (Flag.RESOLUTION_ASSUMED, Flag.MEDIUM_ASSUMED, Flag.RV_MEASURED):
        assert assumed["flags"] & int(flag) and not given["flags"] & int(flag), flag.name
    assert assumed["rv_kms"] is not None and given["rv_kms"] is None
    assert run_command("estimate", ["--model", str(bundle), "--rv", "nan", str(hd122563)]) == 2
