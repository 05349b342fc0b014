"""The catalogue lock (issue 11, point 3) on a local folder and on moto's S3 server: of runs that
start at once exactly one gets it, a held lock refuses with its owner, an expired one is taken
over, a released one is gone, and a lock taken over under a run is noticed."""
from __future__ import annotations

import json
import threading
import time

import pytest

from survey_estimator.catalogue.lock import LOCK_NAME, CatalogueLock, CatalogueLocked


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "cat")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/cat"


def _race(root, n=6, ttl_s=60.0):
    won, refused, barrier = [], [], threading.Barrier(n)

    def one(i):
        lock = CatalogueLock(root, f"run-{i}", ttl_s=ttl_s)
        barrier.wait()
        try:
            won.append(lock.acquire())
        except CatalogueLocked as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused


def test_one_of_many_simultaneous_runs_gets_the_lock(root):
    won, refused = _race(root)
    assert len(won) == 1 and len(refused) == 5
    holder = won[0]
    assert all(holder.run_id in msg and "--break-lock" in msg for msg in refused)
    rec, _ = holder.read()
    assert rec["run_id"] == holder.run_id and rec["token"] == holder.token and "expires" in rec
    holder.release()
    assert holder.read() is None
    again, _ = _race(root, n=2)
    assert len(again) == 1
    again[0].release()


def test_expired_lock_is_taken_over_and_the_old_holder_notices(root):
    old = CatalogueLock(root, "crashed-run", ttl_s=1.0)
    old.acquire()
    old._stop.set()  # the crashed run's heartbeat is gone with it
    with pytest.raises(CatalogueLocked, match="crashed-run"):
        CatalogueLock(root, "too-early", ttl_s=60).acquire()
    time.sleep(1.5)
    new = CatalogueLock(root, "next-night", ttl_s=60).acquire()
    assert new.read()[0]["run_id"] == "next-night"
    old.refresh()
    assert old.lost, "a run whose lock was taken over must notice"
    old.release()  # must not remove the new run's lock
    assert new.read()[0]["run_id"] == "next-night"
    new.release()


def test_break_lock_and_heartbeat(root):
    held = CatalogueLock(root, "held", ttl_s=1.5).acquire()
    first = json.loads(json.dumps(held.read()[0]))
    time.sleep(1.2)  # the heartbeat (every ttl/3) renews it
    assert held.read()[0]["expires"] > first["expires"] and not held.lost
    with pytest.raises(CatalogueLocked):
        CatalogueLock(root, "second", ttl_s=60).acquire()
    broke = CatalogueLock(root, "operator", ttl_s=60).acquire(break_lock=True)
    assert broke.read()[0]["run_id"] == "operator"
    held.release()
    broke.release()
    assert broke.read() is None and LOCK_NAME.startswith("_")
