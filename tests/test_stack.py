"""infra/stack.sh: the local stack (Ray head with token auth, moto S3, MLflow server, all on
127.0.0.1) runs the nightly catalogue twice through `ray job submit`, exactly as the README's
cluster example does; the second run adds no rows, no credential reaches Ray's logs, and `down`
stops every process the stack started."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from catalogue_testing import save_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "infra" / "stack.sh"
BIN = Path(os.sys.executable).parent
FILES = ["HARPS.2003-12-13T06-19-48.371_e2ds_A.fits", "HARPS.2003-12-12T21-42-45.093_blaze_A.fits",
         "ADP.2014-09-16T11-04-45.123.4900-5500.fits", "HARPS.2010-09-18T23-42-36.178_s1d_A.4900-5500.fits"]
CATALOGUED = 3  # the blaze file is an auxiliary product: read with its e2ds, not catalogued


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _run(cmd, env, timeout=600, check=True):
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def _count(env) -> tuple[int, int]:
    out = _run([str(BIN / "survey-estimator"), "query", "--catalogue", "s3://survey/catalogue", "--format", "csv",
                "SELECT count(*), count(DISTINCT (source_uri, etag, model_version)) FROM catalogue"], env).stdout
    return tuple(int(v) for v in out.strip().splitlines()[-1].split(","))


@pytest.mark.slow
def test_nightly_catalogue_twice_through_the_local_stack(tmp_path):
    import boto3

    stack_dir = Path(tempfile.mkdtemp(prefix="se-stack-", dir="/tmp"))  # short: Ray's socket paths
    s3_port, mlflow_port, ray_port, dash_port, agent_port, client_port = _free_ports(6)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "MLFLOW_", "RAY_", "SURVEY_")) and k != "PYTHONPATH"}
    base.update(STACK_DIR=str(stack_dir), STACK_S3_PORT=str(s3_port), STACK_MLFLOW_PORT=str(mlflow_port),
                STACK_RAY_PORT=str(ray_port), STACK_DASHBOARD_PORT=str(dash_port), STACK_AGENT_PORT=str(agent_port),
                STACK_RAY_CLIENT_PORT=str(client_port), STACK_RAY_CPUS="4",
                STACK_RAY_OBJECT_STORE_MB="512", PATH=f"{BIN}:{os.environ['PATH']}")
    try:
        up = _run(["bash", str(STACK), "up"], base, timeout=400)
        env = dict(re.findall(r"^export (\w+)=(.*)$", up.stdout, re.M))
        assert {"RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "MLFLOW_TRACKING_URI", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"} <= set(env)
        assert all("127.0.0.1" in env[k] for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "AWS_ENDPOINT_URL",
                                                   "MLFLOW_TRACKING_URI"))
        token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        assert token not in up.stdout + up.stderr and oct(Path(env["RAY_AUTH_TOKEN_PATH"]).stat().st_mode)[-3:] == "600"
        env = {**base, **env}
        assert _run(["bash", str(STACK), "status"], env).returncode == 0
        no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
        assert _run([str(BIN / "ray"), "job", "list"], {**no_token, "HOME": str(tmp_path)}, timeout=120, check=False).returncode != 0

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        for name in FILES:
            s3.upload_file(str(ROOT / "tests" / "data" / name), "harpn-archive", f"raw/{name}")
        bundle = save_tiny_bundle(tmp_path / "tiny", name="stack-tiny")
        _run([str(BIN / "survey-estimator"), "register", str(bundle), "--alias", "production"], env)

        submit = [str(BIN / "ray"), "job", "submit", "--working-dir", ".", "--", "python", "jobs/catalogue.py",
                  "--archive", "s3://harpn-archive/raw", "--out", "s3://survey/catalogue",
                  "--model", "models:/stellar-estimator@production", "--no-fit", "--json"]
        first = _run(submit, env).stdout
        assert re.search(r'"written": 3\b', first) and _count(env) == (CATALOGUED, CATALOGUED)
        second = _run(submit, env).stdout
        assert re.search(r'"written": 0\b', second) and re.search(r'"skipped": 3\b', second)
        assert _count(env) == (CATALOGUED, CATALOGUED)  # nothing duplicated

        secret = env["AWS_SECRET_ACCESS_KEY"].encode()
        leaked = [p for p in (stack_dir / "ray").rglob("*") if p.is_file() and not p.is_symlink()
                  and secret in p.read_bytes()]
        assert not leaked, f"the S3 secret is in {leaked[:3]}"
    finally:
        down = _run(["bash", str(STACK), "down"], base, timeout=200, check=False)
        status = _run(["bash", str(STACK), "status"], base, check=False)
        procs = _run(["ps", "-eo", "args"], base).stdout
        shutil.rmtree(stack_dir, ignore_errors=True)
    assert down.returncode == 0 and status.returncode != 0
    assert str(stack_dir) not in procs, "a stack process outlived `down`"


def test_stack_script_usage_and_status_without_a_stack(tmp_path):
    env = {**os.environ, "STACK_DIR": str(tmp_path / "none")}
    assert _run(["bash", "-n", str(STACK)], env).returncode == 0
    usage = _run(["bash", str(STACK)], env, check=False)
    assert usage.returncode == 2 and "up|down|status|env" in usage.stderr
    status = _run(["bash", str(STACK), "status"], env, check=False)
    assert status.returncode == 1 and "not set up" in status.stdout
    assert _run(["bash", str(STACK), "down"], env, check=False).returncode == 0  # nothing to stop
    assert not (tmp_path / "none").exists()
