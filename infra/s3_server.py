"""An S3 endpoint on loopback whose buckets outlive it: moto's server plus a snapshot folder.

Used by ``infra/stack.sh`` (the local stack); not part of the package. moto keeps objects in
memory, so this process restores every bucket and object from ``--data`` when it starts and writes
them back there every ``--interval`` seconds when something changed, and when it is stopped
(SIGTERM or SIGINT). ETags survive a restart, multipart ones included, so the catalogue's inventory
sees the same objects again and a rerun adds nothing.

Snapshot layout (``--data``)::

    index.json          [{"bucket", "key", "etag", "sha256", "content_type", "metadata"}, ...] and bucket names
    objects/<sha256>    object bytes, named by content (a key such as ``../x`` never becomes a path)

Usage: python infra/s3_server.py --data DIR --port 9000 [--host 127.0.0.1] [--interval 30]
Credentials: any ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (moto does not check them).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import threading
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

log = logging.getLogger("s3_server")


def _client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "stack"),
                        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "stack"))


def listing(s3) -> tuple[list[str], list[dict]]:
    """(bucket names, [{"bucket", "key", "etag"}]) of everything the server holds."""
    buckets = sorted(b["Name"] for b in s3.list_buckets().get("Buckets", []))
    objects = []
    for b in buckets:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b):
            objects += [{"bucket": b, "key": o["Key"], "etag": o["ETag"]} for o in page.get("Contents", [])]
    return buckets, objects


def snapshot(s3, data: Path, previous: dict[tuple[str, str], dict] | None = None) -> dict[tuple[str, str], dict]:
    """Write every bucket and object to ``data`` (objects already there by content are not
    rewritten; blobs no object uses any more are removed). Returns the index by (bucket, key)."""
    blobs = data / "objects"
    blobs.mkdir(parents=True, exist_ok=True)
    buckets, objects = listing(s3)
    previous = previous or {}
    index = {}
    for o in objects:
        old = previous.get((o["bucket"], o["key"]))
        if old and old["etag"] == o["etag"] and (blobs / old["sha256"]).is_file():
            index[(o["bucket"], o["key"])] = old
            continue
        got = s3.get_object(Bucket=o["bucket"], Key=o["key"])
        body = got["Body"].read()
        digest = hashlib.sha256(body).hexdigest()
        if not (blobs / digest).is_file():
            tmp = blobs / f".{digest}.tmp"
            tmp.write_bytes(body)
            tmp.replace(blobs / digest)
        index[(o["bucket"], o["key"])] = {**o, "sha256": digest, "content_type": got.get("ContentType"),
                                          "metadata": got.get("Metadata", {})}
    tmp = data / "index.json.tmp"
    tmp.write_text(json.dumps({"buckets": buckets, "objects": list(index.values())}, indent=1))
    tmp.replace(data / "index.json")
    used = {e["sha256"] for e in index.values()}
    for blob in blobs.iterdir():
        if blob.name not in used:
            blob.unlink()
    return index


def restore(s3, data: Path) -> dict[tuple[str, str], dict]:
    """Recreate the buckets and objects of ``data/index.json`` (none: nothing). Returns the index."""
    path = data / "index.json"
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    for b in saved["buckets"]:
        s3.create_bucket(Bucket=b)
    index = {}
    for e in saved["objects"]:
        extra = {"ContentType": e["content_type"]} if e.get("content_type") else {}
        body = (data / "objects" / e["sha256"]).read_bytes()
        etag = s3.put_object(Bucket=e["bucket"], Key=e["key"], Body=body, Metadata=e.get("metadata") or {}, **extra)["ETag"]
        if etag != e["etag"]:  # a multipart upload's ETag: give the object its listed ETag back
            _set_etag(e["bucket"], e["key"], e["etag"])
        index[(e["bucket"], e["key"])] = e
    log.info("restored %d buckets, %d objects from %s", len(saved["buckets"]), len(index), data)
    return index


def _set_etag(bucket: str, key: str, etag: str) -> None:
    """Set an object's ETag inside moto (this process's backend): moto has no API for it."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(bucket, key)._etag = etag.strip('"')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="snapshot folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--interval", type=float, default=30.0, help="seconds between snapshots (when something changed)")
    p.add_argument("--bucket", action="append", default=[], help="bucket to create when missing (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    endpoint = f"http://{args.host}:{args.port}"
    s3 = _client(endpoint)
    args.data.mkdir(parents=True, exist_ok=True)
    index = restore(s3, args.data)
    for b in args.bucket:
        if b not in listing(s3)[0]:
            s3.create_bucket(Bucket=b)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("S3 endpoint %s, data in %s", endpoint, args.data)
    seen = listing(s3)
    while True:
        stopping = stop.wait(args.interval)
        current = listing(s3)
        if current != seen or stopping:
            index = snapshot(s3, args.data, index)
            seen = current
        if stopping:
            break
    server.stop()
    log.info("stopped; %d objects saved in %s", len(index), args.data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
