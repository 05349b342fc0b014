"""Shared test fixtures: ONE local Ray cluster and ONE moto S3 server per test session.

Real parts only: a real Ray runtime (2 logical CPUs more than the cores, so actor pools cannot
starve the readers), a real S3 HTTP endpoint on loopback (moto's server), real FITS files from
tests/data (see tests/data/ORIGIN.md).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by the whole session (started on first use)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1; sets the standard AWS variables for this process.

    Yields the endpoint URL. Tests create their own buckets (names unique per test).
    """
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testkey-AKIAEXAMPLE",
        AWS_SECRET_ACCESS_KEY="testsecret-do-not-log-42",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the session's S3 server; yields its name."""
    import boto3

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def tiny_grid(tmp_path_factory) -> str:
    """A tiny analytic grid store (Teff 5000-6000, log g 4.0-5.0, [M/H] -0.5..0.0: 5x3x2 nodes on
    the standard fine wave grid), built in-process by the real build job. Returns its local path."""
    from survey_estimator.synth.backend import BackendConfig
    from survey_estimator.synth.build import BuildConfig, GridRanges, build_grid

    out = str(tmp_path_factory.mktemp("tiny_grid") / "grid")
    build_grid(BuildConfig(
        out=out,
        backend=BackendConfig(name="analytic"),
        ranges=GridRanges(teff=(5000, 6000), logg=(4.0, 5.0), mh=(-0.5, 0.0)),
        use_ray=False,
        progress=False,
    ))
    return out


@pytest.fixture(scope="session")
def _fault_proxy_server(s3_server):
    from fault_proxy import FaultProxy

    proxy = FaultProxy(s3_server)
    yield proxy
    proxy.close()


@pytest.fixture
def fault_proxy(_fault_proxy_server, monkeypatch):
    """The session's fault-injecting proxy in front of the S3 server (tests/fault_proxy.py), with
    no rules; AWS_ENDPOINT_URL points at it for this test."""
    _fault_proxy_server.clear()
    monkeypatch.setenv("AWS_ENDPOINT_URL", _fault_proxy_server.url)
    yield _fault_proxy_server
    _fault_proxy_server.clear()
