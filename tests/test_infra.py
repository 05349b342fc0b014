"""infra/: the KubeRay RayJob and RayCluster, the nightly CronJob, the Ray cluster-launcher YAML and
the documented environment parse and have the structure the catalogue job needs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[1] / "infra"
SECRETS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def _docs(name):
    return [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d]


def _one(name, kind):
    docs = [d for d in _docs(name) if d.get("kind") == kind]
    assert len(docs) == 1, f"{name} should hold one {kind}"
    return docs[0]


def env_file() -> dict[str, str]:
    out = {}
    for line in (INFRA / "catalogue.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", key), line
            out[key] = value
    return out


def _shell_vars(text: str) -> set[str]:
    return set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", text))


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _env_names(container: dict, configmap: dict) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for src in container.get("envFrom", []):
        assert src["configMapRef"]["name"] == configmap["metadata"]["name"]
        names |= set(configmap["data"])
    return names


def _check_secret_refs(container: dict) -> None:
    for e in container.get("env", []):
        if e["name"] in SECRETS:
            assert "value" not in e, f"{e['name']} must come from a Secret, not a literal"
            assert e["valueFrom"]["secretKeyRef"]["name"] == "survey-s3-credentials"


CRON_FIELD = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def valid_cron(expr: str) -> bool:
    """Five fields of numbers, ranges, lists, steps and '*' within each field's range."""
    fields = expr.split()
    if len(fields) != 5:
        return False
    for field, (lo, hi) in zip(fields, CRON_FIELD):
        for part in field.split(","):
            m = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
            if not m:
                return False
            nums = [int(g) for g in (m.group(2), m.group(3)) if g is not None]
            if any(n < lo or n > hi for n in nums) or (len(nums) == 2 and nums[0] > nums[1]):
                return False
            if m.group(4) is not None and int(m.group(4)) == 0:
                return False
    return True


def test_valid_cron_rejects_bad_expressions():
    assert valid_cron("30 9 * * *") and valid_cron("*/15 0-6 1,15 * 1-5")
    assert not valid_cron("60 9 * * *") and not valid_cron("30 9 * *") and not valid_cron("30 25 * * *")


def test_env_file_documents_every_variable_without_secrets():
    env = env_file()
    for k in ("ARCHIVE_URI", "CATALOGUE_URI", "MODEL_URI", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
              "MLFLOW_TRACKING_URI", "RAY_ADDRESS", *SECRETS):
        assert k in env, k
    assert all(env[k] == "" for k in SECRETS), "credentials must not be written into infra/catalogue.env"
    text = (INFRA / "catalogue.env").read_text()
    for k in env:  # each variable has a comment above it
        assert re.search(rf"#[^\n]*\n(?:[A-Z_]+=[^\n]*\n)*{k}=", text), k


def _check_ray_cluster_spec(spec: dict, configmap: dict, entry_vars: set[str]) -> None:
    import ray

    assert spec["rayVersion"] == ray.__version__
    head = _containers(spec["headGroupSpec"]["template"])[0]
    _check_secret_refs(head)
    assert entry_vars <= _env_names(head, configmap), entry_vars - _env_names(head, configmap)
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if _containers(g["template"])[0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu_groups, "a worker group must request nvidia.com/gpu"
    for g in gpu_groups:
        assert g["minReplicas"] == 0 < g["maxReplicas"], "GPU group should scale from zero"
        assert int(g["rayStartParams"]["num-gpus"]) == int(_containers(g["template"])[0]["resources"]["limits"]["nvidia.com/gpu"])
    for g in spec["workerGroupSpecs"]:
        c = _containers(g["template"])[0]
        _check_secret_refs(c)
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= _env_names(c, configmap)


def test_rayjob_runs_the_catalogue_on_gpu_workers():
    job = _one("catalogue-rayjob.yaml", "RayJob")
    configmap = _one("catalogue-cronjob.yaml", "ConfigMap")
    assert job["apiVersion"] == "ray.io/v1"
    entry = job["spec"]["entrypoint"]
    assert re.search(r"python \S*jobs/catalogue\.py", entry)
    for flag in ("--archive", "--out", "--model", "--num-gpus"):
        assert flag in entry
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    _check_ray_cluster_spec(job["spec"]["rayClusterSpec"], configmap, _shell_vars(entry))
    assert set(configmap["data"]) <= set(env_file()), "ConfigMap keys must be documented in catalogue.env"


def test_raycluster_matches_the_cronjob():
    rc = _one("raycluster.yaml", "RayCluster")
    configmap = _one("catalogue-cronjob.yaml", "ConfigMap")
    _check_ray_cluster_spec(rc["spec"], configmap, set())
    assert f"{rc['metadata']['name']}-head-svc" in configmap["data"]["RAY_ADDRESS"]


def test_cronjob_submits_the_catalogue_nightly():
    cron = _one("catalogue-cronjob.yaml", "CronJob")
    configmap = _one("catalogue-cronjob.yaml", "ConfigMap")
    assert cron["apiVersion"] == "batch/v1"
    assert valid_cron(cron["spec"]["schedule"])
    assert cron["spec"]["concurrencyPolicy"] == "Forbid", "two nightly runs must not overlap"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    assert pod["spec"]["restartPolicy"] in ("Never", "OnFailure")
    c = _containers(pod)[0]
    script = " ".join(c.get("command", []) + c.get("args", []))
    assert "ray job submit" in script and re.search(r"python \S*jobs/catalogue\.py", script)
    _check_secret_refs(c)
    used = _shell_vars(script)
    assert used <= _env_names(c, configmap), used - _env_names(c, configmap)
    assert not (SECRETS & used), "credentials must not be passed on the command line"


def test_cluster_launcher_has_a_gpu_worker_group():
    cfg = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu = {k: v for k, v in types.items() if v.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu, "no GPU worker type"
    for v in gpu.values():
        assert v["min_workers"] == 0 and v["max_workers"] >= 1
        assert v["node_config"]["InstanceType"].startswith(("g", "p"))
    assert cfg["max_workers"] >= sum(v.get("max_workers", 0) for k, v in types.items() if k != cfg["head_node_type"])
    assert cfg["file_mounts"]["/home/ubuntu/catalogue.env"] == "infra/catalogue.env"
    assert all("catalogue.env" in cmd for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in cmd)


@pytest.mark.parametrize("name", ["catalogue-rayjob.yaml", "raycluster.yaml", "catalogue-cronjob.yaml", "ray-cluster.yaml"])
def test_no_literal_credentials(name):
    text = (INFRA / name).read_text()
    assert not re.search(r"(?i)(secret[_-]?access[_-]?key|access[_-]?key[_-]?id)\s*:\s*['\"]?[A-Za-z0-9/+]{16,}", text)
    assert not re.search(r"\bAKIA[A-Z0-9]{12,}\b", text)


def _head_group(spec: dict) -> dict:
    return spec["headGroupSpec"]


@pytest.mark.parametrize("name,kind,path", [("raycluster.yaml", "RayCluster", ()),
                                            ("catalogue-rayjob.yaml", "RayJob", ("rayClusterSpec",))])
def test_kuberay_dashboard_on_the_pod_ip_with_token_auth(name, kind, path):
    """Issue 11: the dashboard / job API bound to the Pod IP (cluster network), token auth on."""
    spec = _one(name, kind)["spec"]
    for key in path:
        spec = spec[key]
    assert spec["authOptions"]["mode"] == "token"
    host = _head_group(spec)["rayStartParams"]["dashboard-host"]
    assert host == "$RAY_POD_IP", host
    head = _containers(_head_group(spec)["template"])[0]
    pod_ip = [e for e in head["env"] if e["name"] == "RAY_POD_IP"]
    assert pod_ip and pod_ip[0]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    for probe in ("readinessProbe", "livenessProbe"):  # not KubeRay's localhost:8265 default
        assert head[probe]["httpGet"]["path"] == "/api/healthz"


def test_nothing_listens_on_all_interfaces_and_auth_is_never_disabled():
    for name in ("raycluster.yaml", "catalogue-rayjob.yaml", "catalogue-cronjob.yaml", "ray-cluster.yaml", "catalogue.env"):
        text = (INFRA / name).read_text()
        assert "0.0.0.0" not in text, name
        assert not re.search(r"RAY_AUTH_MODE\s*[:=]\s*['\"]?disabled", text), name
    env = env_file()
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == "", "the token is never written into the file"
    assert _one("catalogue-cronjob.yaml", "ConfigMap")["data"]["RAY_AUTH_MODE"] == "token"


def test_cronjob_submitter_sends_the_clusters_token():
    rc = _one("raycluster.yaml", "RayCluster")
    c = _containers(_one("catalogue-cronjob.yaml", "CronJob")["spec"]["jobTemplate"]["spec"]["template"])[0]
    token = [e for e in c["env"] if e["name"] == "RAY_AUTH_TOKEN"]
    assert token, "ray job submit needs RAY_AUTH_TOKEN"
    # the Secret KubeRay creates for a RayCluster with authOptions: named after the cluster, key auth_token
    assert token[0]["valueFrom"]["secretKeyRef"] == {"name": rc["metadata"]["name"], "key": "auth_token"}


def test_cluster_launcher_binds_the_dashboard_to_the_private_address():
    cfg = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    head = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    assert head and all("--dashboard-host=" in c and "hostname -I" in c for c in head)


def test_one_submission_per_night():
    """issue 11, point 3: the CronJob submits with a fixed id per night, the RayJob has one too."""
    cron = _one("catalogue-cronjob.yaml", "CronJob")
    c = _containers(cron["spec"]["jobTemplate"]["spec"]["template"])[0]
    script = " ".join(c.get("command", []) + c.get("args", []))
    assert 'night_id="catalogue-$(date -u +%Y-%m-%d)"' in script and '--submission-id "$night_id"' in script
    job = _one("catalogue-rayjob.yaml", "RayJob")
    assert job["spec"]["jobId"] == "catalogue-$NIGHT" and job["metadata"]["name"].endswith("$NIGHT")
