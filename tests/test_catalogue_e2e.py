"""End to end (issue 5, "Done when"): a mock HARPS-N archive in S3 (moto server) made with the
simulator (33 files at known labels over three nights) plus the real files and three broken ones;
the catalogue job writes to S3; reruns add nothing; five new files are exactly five new rows;
DuckDB queries the result; the S3 secret never shows in output, logs or catalogue."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import boto3
import numpy as np
import pytest

from catalogue_testing import save_tiny_bundle
from survey_estimator.catalogue.inventory import open_catalogue
from survey_estimator.catalogue.query import query
from survey_estimator.cli import run_command

REAL = ["HARPS.2003-12-13T06-19-48.371_e2ds_A.fits", "HARPS.2003-12-12T21-42-45.093_blaze_A.fits",
        "HARPS.2010-09-18T23-42-36.178_s1d_A.4900-5500.fits", "ADP.2014-09-16T11-04-45.123.4900-5500.fits",
        "HD41248_1_1_S2D_A.rows80-95.fits.gz"]
REAL_SCIENCE = 4  # the blaze file is not catalogued
NIGHTS = {"2016-01-07": "2016-01-08T0{h}:{m:02d}:00.000", "2016-01-08": "2016-01-08T2{h}:{m:02d}:00.000",
          "2016-01-09": "2016-01-09T2{h}:{m:02d}:00.000"}


def _exposures(night_pattern: str, n: int, offset: int):
    from survey_estimator.e2ds_writer import Exposure

    rng = np.random.default_rng(offset)
    out = []
    for i in range(n):
        labels = (rng.uniform(5050, 5950), rng.uniform(4.1, 4.9), rng.uniform(-0.45, -0.05), rng.uniform(0, 10))
        name = "SIM-{:.0f}-{:.2f}-{:.2f}-{:.1f}".format(*labels)
        out.append(Exposure(*labels, snr=80.0, seed=offset + i, date_obs=night_pattern.format(h=i % 3, m=i),
                            object_name=name))
    return out


def _upload(folder: Path, bucket: str, prefix: str) -> None:
    s3 = boto3.client("s3")
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(folder).as_posix()}")


@pytest.fixture(scope="module")
def mock_archive(tiny_grid, tmp_path_factory, data_dir):
    """Local folder: raw/<night>/ simulated e2ds (+ shared blaze), raw/real/, raw/broken/; and 5 more."""
    from survey_estimator.e2ds_writer import E2dsSimulator

    root = tmp_path_factory.mktemp("archive")
    sim = E2dsSimulator(tiny_grid)
    truth = {}
    for k, (night, pattern) in enumerate(NIGHTS.items()):
        ex = _exposures(pattern, 11, 100 * k)
        sim.write_many(root / "raw" / night, ex, blaze_name=f"HARPN.{night}_blaze_A.fits")
        truth.update({e.object_name: (night, e) for e in ex})
    (root / "raw" / "real").mkdir()
    for name in REAL:
        (root / "raw" / "real" / name).write_bytes((data_dir / name).read_bytes())
    broken = root / "raw" / "broken"
    broken.mkdir()
    (broken / "garbage.fits").write_bytes(os.urandom(4000))
    (broken / "HARPN.2016-01-08T23-59-00.000_e2ds_A.fits").write_bytes((data_dir / REAL[0]).read_bytes()[:40000])
    import gzip

    (broken / "notfits.fits.gz").write_bytes(gzip.compress(b"this is not FITS at all" * 50))
    extra = tmp_path_factory.mktemp("extra")
    later = _exposures("2016-01-10T2{h}:{m:02d}:00.000", 5, 900)
    sim.write_many(extra / "2016-01-10", later, blaze_name="HARPN.2016-01-10_blaze_A.fits")
    truth.update({e.object_name: ("2016-01-10", e) for e in later})
    return root, extra, truth


def _run(args, capsys, caplog):
    caplog.clear()
    code = run_command("catalogue", args)
    out = capsys.readouterr()
    return code, out.out + out.err + "\n".join(r.getMessage() for r in caplog.records)


def test_catalogue_end_to_end_on_s3(mock_archive, s3_bucket, ray_cluster, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    root, extra, truth = mock_archive
    _upload(root, s3_bucket, "archive")
    bundle = save_tiny_bundle(tmp_path / "bundle")
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    archive, out = f"s3://{s3_bucket}/archive/raw", f"s3://{s3_bucket}/catalogue"
    args = ["--archive", archive, "--out", out, "--model", str(bundle), "--batch-size", "8", "--actors", "1",
            "--read-batch-size", "4", "--actor-timeout", "120", "--json"]

    code, text1 = _run(args, capsys, caplog)
    assert code == 0, text1
    n_sim, n_broken = 33, 3
    cols, rows = query(out, "SELECT source_uri, night::VARCHAR AS night, object, instrument, status, error, teff, teff_err, logg, "
                            "logg_err, mh, mh_err, vsini, vsini_err, snr, cov, flags, model_version, etag FROM catalogue")
    recs = [dict(zip(cols, r)) for r in rows]
    assert len(recs) == n_sim + REAL_SCIENCE + n_broken
    ok = [r for r in recs if r["status"] == "ok"]
    err = [r for r in recs if r["status"] == "error"]
    assert sorted(r["source_uri"].rsplit("/", 1)[-1] for r in err) == sorted(
        ["garbage.fits", "HARPN.2016-01-08T23-59-00.000_e2ds_A.fits", "notfits.fits.gz"])
    assert all(r["error"] and r["source_uri"].rsplit("/", 1)[-1] in r["error"] for r in err)
    assert all("/broken/" not in r["source_uri"] for r in ok) and len(ok) == n_sim + REAL_SCIENCE
    for r in ok:
        vals = [r[k] for k in ("teff", "teff_err", "logg", "logg_err", "mh", "mh_err", "vsini", "vsini_err", "snr")]
        assert np.isfinite(vals).all(), r["source_uri"]
        cov = np.asarray(r["cov"]).reshape(4, 4)
        assert np.allclose(np.sqrt(np.diag(cov)), [r["teff_err"], r["logg_err"], r["mh_err"], r["vsini_err"]], rtol=1e-6)
    sims = {r["object"]: r for r in ok if (r["object"] or "").startswith("SIM-")}
    assert len(sims) == n_sim
    for name, r in sims.items():
        night, e = truth[name]
        assert r["night"] == night and r["instrument"] == "HARPS-N"
        assert r["snr"] == pytest.approx(e.snr, rel=0.3)
    etags = {r["source_uri"]: r["etag"] for r in recs}
    s3 = boto3.client("s3")
    key = next(k for k in etags if "/2016-01-07/" in k)
    assert etags[key] == s3.head_object(Bucket=s3_bucket, Key=key.split("/", 3)[3])["ETag"].strip('"')

    n_files = len(open_catalogue(out).files)
    code, text2 = _run(args, capsys, caplog)
    assert code == 0 and '"written": 0' in text2 and '"skipped": %d' % len(recs) in text2
    assert len(open_catalogue(out).files) == n_files, "a rerun must not write any file"

    _upload(extra, s3_bucket, "archive/raw")
    code, text3 = _run(args, capsys, caplog)
    assert code == 0 and '"processed": 5' in text3 and '"written": 5' in text3, text3
    (n,), = query(out, "SELECT count(*) FROM catalogue")[1]
    assert n == len(recs) + 5
    per_night = dict(query(out, "SELECT night::VARCHAR, count(*) FROM latest WHERE object LIKE 'SIM-%' GROUP BY 1")[1])
    assert per_night == {"2016-01-07": 11, "2016-01-08": 11, "2016-01-09": 11, "2016-01-10": 5}

    everything = text1 + text2 + text3 + repr(query(out, "SELECT * FROM catalogue")[1])
    assert secret not in everything and os.environ["AWS_ACCESS_KEY_ID"] not in everything
    # nor in the Ray cluster's own logs (Ray writes runtime envs and operator arguments there)
    session = Path(ray_cluster._private.worker.global_worker.node.get_session_dir_path()) / "logs"
    assert (session / "runtime_env_agent.log").is_file() or any(session.glob("python-core-worker-*.log"))
    leaked = [p.name for p in session.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaked, f"secret found in Ray logs: {leaked}"
