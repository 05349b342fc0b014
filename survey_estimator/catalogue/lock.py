"""One run at a time per catalogue: a lock object ``<catalogue>/_catalogue.lock``.

The lock is a small JSON object (owner, run id, host, pid, Ray job id, created, expires). It is
created only if absent: ``PutObject`` with ``If-None-Match: *`` on S3 (S3 and moto answer 412
when it exists), locally a hard link of the written lock (fails when one exists). While a run holds it a heartbeat thread pushes
the expiry forward (S3: ``If-Match`` on the lock's own ETag, so a run whose lock was taken over
notices). A lock past its expiry belongs to a run that died (a crash, a killed pod): the next
run takes it over (S3: a conditional overwrite of exactly that expired object; locally: an
atomic rename of it aside). ``--break-lock`` removes a lock that is not expired, for an operator
who has made sure its owner is gone.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import uuid

from ..storage import StorageError, is_s3, redact, resolve

log = logging.getLogger(__name__)

LOCK_NAME = "_catalogue.lock"


class CatalogueLocked(RuntimeError):
    """Another run holds the catalogue's lock; the message names it, its expiry and the recovery."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class CatalogueLock:
    """The lock of the catalogue at ``out_uri``, for ``run_id``; ``ttl_s`` seconds between heartbeats' expiry.

    Use as a context manager, or :meth:`acquire` / :meth:`release`. ``lost`` turns True when a
    heartbeat finds the lock no longer ours.
    """

    def __init__(self, out_uri: str, run_id: str, ttl_s: float = 900.0):
        self.out_uri = out_uri.rstrip("/")
        self.uri = f"{self.out_uri}/{LOCK_NAME}"
        self.run_id = run_id
        self.ttl_s = float(ttl_s)
        self.token = uuid.uuid4().hex
        self.lost = False
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the record -------------------------------------------------------------------------------
    def _record(self) -> bytes:
        now = _now()
        return json.dumps({
            "owner": f"{socket.gethostname()}:{os.getpid()}", "run_id": self.run_id, "token": self.token,
            "ray_job": os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_JOB_ID"),
            "created": now.isoformat(), "expires": (now + dt.timedelta(seconds=self.ttl_s)).isoformat(),
        }, indent=1).encode()

    @staticmethod
    def _expired(rec: dict) -> bool:
        try:
            return dt.datetime.fromisoformat(rec["expires"]) <= _now()
        except (KeyError, TypeError, ValueError):
            return True  # an unreadable lock protects nothing

    def _locked_error(self, rec: dict) -> CatalogueLocked:
        return CatalogueLocked(
            f"catalogue {redact(self.out_uri)} is locked by run {rec.get('run_id')} ({rec.get('owner')}, Ray job "
            f"{rec.get('ray_job')}) until {rec.get('expires')}: one run at a time. If that run is gone (crashed, killed), "
            f"wait for the expiry or rerun with --break-lock; see docs/catalogue.md, 'After a crash'")

    # -- storage primitives -------------------------------------------------------------------------
    def _s3(self):
        from .inventory import _split_s3, boto3_client

        bucket, key = _split_s3(self.uri)
        return boto3_client(), bucket, key

    def read(self) -> tuple[dict, str] | None:
        """(the lock record, its ETag or path marker), or None when there is no lock."""
        if is_s3(self.uri):
            from botocore.exceptions import ClientError

            client, bucket, key = self._s3()
            try:
                obj = client.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise StorageError(f"cannot read lock {self.uri}: {redact(str(exc))}") from None
            body, etag = obj["Body"].read(), obj["ETag"]
        else:
            try:
                with open(resolve(self.uri).path, "rb") as f:
                    body, etag = f.read(), "local"
            except FileNotFoundError:
                return None
        try:
            return json.loads(body), etag
        except ValueError:
            return {}, etag

    def _put(self, if_match: str | None = None) -> bool:
        """Write our record if absent (or, with ``if_match``, if the lock is still that object);
        False when the condition fails."""
        body = self._record()
        if is_s3(self.uri):
            from botocore.exceptions import ClientError

            client, bucket, key = self._s3()
            cond = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
            try:
                self._etag = client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **cond)["ETag"]
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409", "NoSuchKey"):
                    return False
                raise StorageError(f"cannot write lock {self.uri}: {redact(str(exc))}") from None
            return True
        path = resolve(self.uri).path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if if_match:  # heartbeat: our own lock, rewritten atomically
            rec = self.read()
            if rec is None or rec[0].get("token") != self.token:
                return False
            tmp = f"{path}.{self.token}.tmp"
            with open(tmp, "wb") as f:
                f.write(body)
            os.replace(tmp, path)
            return True
        # written aside, then linked into place: the lock appears with its content in one step (an
        # O_EXCL file is empty until written, and a rival reading it then would find it unreadable,
        # count it expired and take it over)
        tmp = f"{path}.{self.token}.new"
        with open(tmp, "wb") as f:
            f.write(body)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def _remove(self, etag: str, token: str | None) -> bool:
        """Remove the lock if it is still the object read as ``etag`` (holding ``token``)."""
        if is_s3(self.uri):
            from botocore.exceptions import ClientError

            client, bucket, key = self._s3()
            try:
                client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "NoSuchKey", "412", "404"):
                    return False
                raise StorageError(f"cannot remove lock {self.uri}: {redact(str(exc))}") from None
            return True
        path = resolve(self.uri).path
        aside = f"{path}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(path, aside)  # atomic: of two runs removing it, one gets it
        except FileNotFoundError:
            return False
        try:
            with open(aside, "rb") as f:
                moved = json.loads(f.read() or b"{}")
        except ValueError:
            moved = {}
        if token is not None and moved.get("token") != token:  # someone's fresh lock: put it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True

    # -- the protocol -----------------------------------------------------------------------------
    def acquire(self, break_lock: bool = False) -> "CatalogueLock":
        """Take the lock, taking over an expired one (or any, with ``break_lock``).

        Raises:
            CatalogueLocked: another run holds it.
        """
        for _ in range(3):
            if self._put():
                log.info("catalogue lock %s taken by run %s (expires in %.0f s unless renewed)", redact(self.uri),
                         self.run_id, self.ttl_s)
                self._start_heartbeat()
                return self
            found = self.read()
            if found is None:
                continue  # released in between
            rec, etag = found
            if not (break_lock or self._expired(rec)):
                raise self._locked_error(rec)
            log.warning("%s catalogue lock of run %s (%s, expired %s) removed", "breaking the" if break_lock else "expired:",
                        rec.get("run_id"), rec.get("owner"), rec.get("expires"))
            self._remove(etag, rec.get("token"))
        found = self.read()
        raise self._locked_error(found[0] if found else {})

    def refresh(self) -> None:
        """Push the expiry forward; sets ``lost`` when the lock is no longer ours."""
        if not self._put(if_match=self._etag or "local"):
            self.lost = True
            log.error("catalogue lock %s is no longer held by run %s (expired and taken over?)", redact(self.uri), self.run_id)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.lost:
            return
        try:
            found = self.read()
            if found is not None and found[0].get("token") == self.token:
                self._remove(found[1], self.token)
        except StorageError as exc:
            log.warning("could not remove the catalogue lock %s (%s): it expires by itself", redact(self.uri), exc)

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    self.refresh()
                except Exception as exc:  # a storage hiccup: the next beat tries again before expiry
                    log.warning("catalogue lock heartbeat failed: %s", redact(str(exc)))
                if self.lost:
                    return

        self._thread = threading.Thread(target=beat, name="catalogue-lock-heartbeat", daemon=True)
        self._thread.start()

    def __enter__(self) -> "CatalogueLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
