"""The nightly catalogue under faults and odd inputs (issue 11): each failure is injected against
the session's real Ray cluster and moto's S3 server (behind tests/fault_proxy.py), and the
catalogue is checked afterwards: every good file exactly once per model version, every bad one
an error row with its class and reason, transient ones redone by the next run, no run hanging
past its deadline.

Archives are three real files (an old-DRS e2ds with its blaze, a 1D spectrum, an ESO Phase-3
table) plus the odd entries of each test; the model is an untrained tiny bundle.
"""
from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from catalogue_testing import save_tiny_bundle
from survey_estimator.catalogue.inventory import catalogue_files
from survey_estimator.catalogue.lock import LOCK_NAME, CatalogueLock
from survey_estimator.catalogue.pipeline import CatalogueConfig, run_catalogue
from survey_estimator.catalogue.query import query
from survey_estimator.catalogue.retry import RetryPolicy
from survey_estimator.cli import run_command

E2DS = "HARPS.2003-12-13T06-19-48.371_e2ds_A.fits"
BLAZE = "HARPS.2003-12-12T21-42-45.093_blaze_A.fits"
S1D = "HARPS.2010-09-18T23-42-36.178_s1d_A.4900-5500.fits"
ADP = "ADP.2014-09-16T11-04-45.123.4900-5500.fits"
GOOD = (E2DS, S1D, ADP)
FAST_RETRY = RetryPolicy(attempts=3, base_s=0.05, max_delay_s=0.2, budget_s=5.0)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return str(save_tiny_bundle(tmp_path_factory.mktemp("bundle") / "b"))


def _local_archive(root: Path, data_dir: Path, names=GOOD + (BLAZE,)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(data_dir / name, root / name)
    return root


def _s3_archive(bucket: str, data_dir: Path, extra: dict[str, bytes] | None = None) -> str:
    s3 = boto3.client("s3")
    for name in GOOD + (BLAZE,):
        s3.put_object(Bucket=bucket, Key=f"raw/{name}", Body=(data_dir / name).read_bytes())
    for key, body in (extra or {}).items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/raw"


def _config(archive, out, bundle, **kw) -> CatalogueConfig:
    base = dict(archive=str(archive), out=str(out), model=bundle, actor_start_timeout_s=120, batch_size=4,
                read_batch_size=2, retry=FAST_RETRY, fit=False)
    return CatalogueConfig(**{**base, **kw})


def _rows(out) -> list[dict]:
    cols, rows = query(str(out), "SELECT source_uri, etag, model_version, status, error_class, error FROM catalogue")
    return [dict(zip(cols, r)) for r in rows]


def _by_name(rows) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["source_uri"].rsplit("/", 1)[-1], []).append(r)
    return out


def _assert_good_once(out, names=GOOD) -> None:
    """Every good file has exactly one ok row per model version."""
    ok = query(str(out), "SELECT source_uri, model_version, count(*) FROM catalogue WHERE status = 'ok' GROUP BY ALL")[1]
    counts = {(u.rsplit("/", 1)[-1], v): n for u, v, n in ok}
    versions = {v for _, v in counts}
    assert versions, "no ok rows at all"
    for v in versions:
        for name in names:
            assert counts.get((name, v)) == 1, (name, v, counts)


def test_blaze_outage_is_transient_and_redone(fault_proxy, s3_bucket, data_dir, bundle, ray_cluster):
    archive = _s3_archive(s3_bucket, data_dir)
    out = f"s3://{s3_bucket}/cat"
    fault_proxy.add(r"_blaze_A\.fits", status=503)  # only the blaze object is down
    s = run_catalogue(_config(archive, out, bundle))
    assert (s.processed, s.ok, s.transient, s.permanent) == (3, 2, 1, 0)
    (row,) = _by_name(_rows(out))[E2DS]
    assert row["error_class"] == "transient" and "blaze fetch" in row["error"], row
    fault_proxy.clear()
    s = run_catalogue(_config(archive, out, bundle))
    assert (s.skipped, s.processed, s.ok) == (2, 1, 1), s
    _assert_good_once(out)
    assert query(out, "SELECT status FROM latest WHERE source_uri LIKE '%e2ds%'")[1] == [("ok",)]


def test_odd_local_entries_never_stop_a_run(tmp_path, data_dir, bundle, ray_cluster, caplog):
    raw = _local_archive(tmp_path / "raw", data_dir)
    (raw / "loop.fits").symlink_to(raw / "loop.fits")
    (raw / "dangling.fits").symlink_to(raw / "nowhere.fits")
    os.mkfifo(raw / "HARPN.2016-01-08T02-30-21.236_e2ds_A.fits")  # a FIFO named .fits: must not hang
    latin1 = os.fsencode(str(raw)) + b"/caf\xe9_" + S1D.encode()
    with open(latin1, "wb") as f:
        f.write((data_dir / S1D).read_bytes())
    (raw / "bomb.fits.gz").write_bytes(gzip.compress(b"\0" * (8 << 20)))  # 8 MB once unpacked
    (raw / "huge.fits").write_bytes(b"SIMPLE  =                    T" + b" " * (3 << 20))
    out = tmp_path / "cat"
    t0 = time.time()
    s = run_catalogue(_config(raw, out, bundle, max_file_bytes=2 << 20, max_decompressed_bytes=4 << 20))
    assert time.time() - t0 < 120
    rows = _by_name(_rows(out))
    _assert_good_once(out, GOOD + ("caf\\xe9_" + S1D,))
    assert "HARPN.2016-01-08T02-30-21.236_e2ds_A.fits" not in rows
    assert any("not a regular file" in r.getMessage() for r in caplog.records)
    expect = {"loop.fits": "cannot stat", "dangling.fits": "cannot stat", "bomb.fits.gz": "gzip content over",
              "huge.fits": "limit per file"}
    for name, reason in expect.items():
        (row,) = rows[name]
        assert row["status"] == "error" and row["error_class"] == "permanent" and reason in row["error"], row
    assert s.permanent == 4 and s.transient == 0
    s = run_catalogue(_config(raw, out, bundle, max_file_bytes=2 << 20, max_decompressed_bytes=4 << 20))
    assert s.processed == 0 and s.written == 0, "permanent errors are not retried"


def test_unsafe_s3_keys_are_error_rows(fault_proxy, s3_bucket, data_dir, bundle, ray_cluster):
    body = (data_dir / S1D).read_bytes()
    archive = _s3_archive(s3_bucket, data_dir, {"raw//double.fits": body, "raw/sub/../dots.fits": body})
    out = f"s3://{s3_bucket}/cat"
    s = run_catalogue(_config(archive, out, bundle))
    rows = _by_name(_rows(out))
    _assert_good_once(out)
    for name in ("double.fits", "dots.fits"):
        (row,) = rows[name]
        assert row["error_class"] == "permanent" and "unsafe S3 key" in row["error"], row
    assert s.permanent == 2


def test_stalled_object_meets_the_file_deadline(fault_proxy, s3_bucket, data_dir, bundle, ray_cluster):
    archive = _s3_archive(s3_bucket, data_dir)
    out = f"s3://{s3_bucket}/cat"
    fault_proxy.add(r"s1d_A", stall_s=90)  # the object never answers within the run
    t0 = time.time()
    s = run_catalogue(_config(archive, out, bundle, file_deadline_s=4))
    took = time.time() - t0
    assert took < 60, f"the run waited {took:.0f} s on a stalled object"
    (row,) = _by_name(_rows(out))[S1D]
    assert row["error_class"] == "transient", row
    assert s.ok == 2
    fault_proxy.clear()
    s = run_catalogue(_config(archive, out, bundle, file_deadline_s=60))
    assert (s.processed, s.ok) == (1, 1)
    _assert_good_once(out)


def test_outage_stops_the_run_loudly_and_the_next_run_redoes_it(fault_proxy, s3_bucket, data_dir, bundle, ray_cluster,
                                                                 capsys):
    body = (data_dir / ADP).read_bytes()
    copies = {f"raw/copy{i:02d}/{ADP}": body for i in range(9)}
    archive = _s3_archive(s3_bucket, data_dir, copies)
    out = f"s3://{s3_bucket}/cat"
    fault_proxy.add(r"/raw/.*\.fits", method=None, drop=True)  # the endpoint dies for every object after the listing
    args = ["--archive", archive, "--out", out, "--model", bundle, "--read-batch-size", "2", "--batch-size", "4",
            "--actor-timeout", "120", "--no-fit", "--json"]
    t0 = time.time()
    code = run_command("catalogue", args)
    took = time.time() - t0
    text = capsys.readouterr().out
    assert code == 3 and "storage outage" in text, text
    assert took < 90, f"an outage run took {took:.0f} s"
    print(f"outage run: exit {code} after {took:.1f} s")
    rows = _rows(out)
    assert rows and all(r["error_class"] == "transient" for r in rows)
    assert not CatalogueLock(out, "probe").read(), "the lock must be released"
    fault_proxy.clear()
    assert run_command("catalogue", args) == 0
    _assert_good_once(out, GOOD + (ADP,))
    (n,), = query(out, f"SELECT count(DISTINCT source_uri) FROM catalogue WHERE status = 'ok'")[1]
    assert n == 3 + 9


def test_one_run_at_a_time(tmp_path, data_dir, bundle, ray_cluster, capsys):
    raw = _local_archive(tmp_path / "raw", data_dir)
    out = tmp_path / "cat"
    other = CatalogueLock(str(out), "other-run", ttl_s=60).acquire()
    args = ["--archive", str(raw), "--out", str(out), "--model", bundle, "--actor-timeout", "120", "--no-fit"]
    assert run_command("catalogue", args) == 2
    text = capsys.readouterr().out
    assert "locked by run other-run" in text and "--break-lock" in text
    assert catalogue_files(str(out)) == []
    other.release()
    assert run_command("catalogue", args) == 0 and run_command("catalogue", args) == 0
    _assert_good_once(out)
    assert not (out / LOCK_NAME).exists()


def test_damaged_parquet_is_moved_aside_and_its_files_redone(tmp_path, data_dir, bundle, ray_cluster, caplog):
    raw = _local_archive(tmp_path / "raw", data_dir)
    out = tmp_path / "cat"
    run_catalogue(_config(raw, out, bundle))
    files = catalogue_files(str(out))
    assert len(files) == 3  # one per night
    victim = Path(files[0])
    victim.write_bytes(victim.read_bytes()[:200])  # truncated
    (n,), = query(str(out), "SELECT count(*) FROM catalogue")[1]
    assert n == 2, "queries skip the damaged file"
    s = run_catalogue(_config(raw, out, bundle))
    assert s.processed == 1 and s.ok == 1
    assert any("moved to .damaged" in r.getMessage() for r in caplog.records)
    assert (out / ".damaged").is_dir() and not victim.exists()
    _assert_good_once(out)


def test_failed_night_write_does_not_skip_the_others(fault_proxy, s3_bucket):
    from catalogue_testing import fake_rows
    from survey_estimator.catalogue.predict import Estimates, build_table
    from survey_estimator.catalogue.write import NightWriter
    from survey_estimator.models.resolve import ModelRef
    from survey_estimator.storage import StorageError, resolve

    import numpy as np

    nights = ["2016-01-07", "2016-01-08", "2016-01-09"]
    n = len(nights)
    table = build_table(fake_rows([f"s3://x/{i}.fits" for i in range(n)], nights), np.ones(n, bool),
                        Estimates.network(np.full((n, 4), 5000.0), np.full((n, 4), 0.1), np.zeros((n, 16)),
                                          np.zeros(n, np.int64)), ModelRef("spec", "m", "1"))
    fault_proxy.add(r"night(=|%3D)2016-01-08", method="PUT", status=503)
    writer = NightWriter(resolve(f"s3://{s3_bucket}/cat"), "R1")
    writer.add(table)
    with pytest.raises(StorageError, match="2016-01-08"):
        writer.close()
    written = sorted(f.split("/")[-2] for f in catalogue_files(f"s3://{s3_bucket}/cat"))
    assert written == ["night=2016-01-07", "night=2016-01-09"]


def _worker_pids(marker: bytes) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def test_lost_read_task_is_counted_and_redone(fault_proxy, s3_bucket, data_dir, bundle, ray_cluster):
    archive = _s3_archive(s3_bucket, data_dir)
    out = f"s3://{s3_bucket}/cat"
    fault_proxy.add(r"s1d_A", stall_s=90)  # holds its read task while the test kills the worker
    killed = []

    def kill_reader():
        deadline = time.time() + 90
        while time.time() < deadline and not killed:
            if any(m == "GET" and "s1d_A" in p for m, p in list(fault_proxy.requests)):
                for pid in _worker_pids(b"MapBatches(read_and_estimate)"):
                    os.kill(pid, signal.SIGKILL)  # a worker dies, as when the OOM killer strikes
                    killed.append(pid)
            time.sleep(0.2)

    t = threading.Thread(target=kill_reader, daemon=True)
    t.start()
    s = run_catalogue(_config(archive, out, bundle, read_batch_size=1, max_task_retries=0, file_deadline_s=80,
                              transient_abort_count=100, transient_abort_rate=2.0))  # no outage stop here
    t.join(timeout=5)
    assert killed, "no read worker found to kill"
    rows = _by_name(_rows(out))
    lost = {name for name, rs in rows.items() if any("lost" in (r["error"] or "") for r in rs)}
    # the stalled file's worker was killed (others may have been reading too: their files count as lost as well)
    assert S1D in lost and s.lost == len(lost) == s.transient and s.ok == 3 - len(lost), (s, lost)
    assert all(r["error_class"] == "transient" for name in lost for r in rows[name])
    fault_proxy.clear()
    s = run_catalogue(_config(archive, out, bundle))
    assert (s.processed, s.ok) == (len(lost), len(lost))
    _assert_good_once(out)


def _saved_then_signal(out, send, timeout_s=150) -> None:
    """Wait until the run has saved a Parquet file, then ``send()`` the signal."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and not catalogue_files(out):
        time.sleep(0.3)
    send()


def _check_after_signal(out, archive, bundle, fault_proxy) -> None:
    assert not CatalogueLock(out, "probe").read(), "the lock must be released"
    saved = {name for name, rows in _by_name(_rows(out)).items() if any(r["status"] == "ok" for r in rows)}
    assert saved and S1D not in saved, "the rows made before the signal must be saved"
    fault_proxy.clear()
    s = run_catalogue(_config(archive, out, bundle))
    assert s.processed == s.ok == len(GOOD) - len(saved)
    _assert_good_once(out)


def test_sigterm_saves_the_rows_made_and_the_rerun_completes(fault_proxy, s3_bucket, data_dir, bundle, ray_cluster):
    from survey_estimator.catalogue.pipeline import RunInterrupted

    archive = _s3_archive(s3_bucket, data_dir)
    out = f"s3://{s3_bucket}/cat"
    fault_proxy.add(r"s1d_A", stall_s=600)  # keeps the run busy until the signal
    sender = threading.Thread(target=_saved_then_signal, args=(out, lambda: os.kill(os.getpid(), signal.SIGTERM)),
                              daemon=True)
    sender.start()
    t0 = time.time()
    with pytest.raises(RunInterrupted):
        run_catalogue(_config(archive, out, bundle, read_batch_size=1, batch_size=1, flush_rows=1, file_deadline_s=600))
    assert time.time() - t0 < 150
    _check_after_signal(out, archive, bundle, fault_proxy)


@pytest.mark.slow  # a second driver process on the session's cluster: its workers start afresh (minutes on 2 cores)
def test_sigterm_to_the_job_process_exits_143_after_saving(fault_proxy, s3_bucket, data_dir, bundle, ray_cluster):
    archive = _s3_archive(s3_bucket, data_dir)
    out = f"s3://{s3_bucket}/cat"
    fault_proxy.add(r"s1d_A", stall_s=600)
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "jobs" / "catalogue.py"), "--archive", archive,
           "--out", out, "--model", bundle, "--read-batch-size", "1", "--batch-size", "1", "--flush-rows", "1",
           "--actor-timeout", "120", "--no-fit", "--file-deadline", "600"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _saved_then_signal(out, lambda: proc.send_signal(signal.SIGTERM), timeout_s=300)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = proc.stdout.read().decode()
    assert code == 128 + signal.SIGTERM, text[-3000:]
    assert "saved" in text
    _check_after_signal(out, archive, bundle, fault_proxy)
