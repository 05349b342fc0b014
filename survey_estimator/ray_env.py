"""What Ray workers get from the driver's environment, for every job (training and catalogue).

Ray writes a job's, task's or Ray Train run's ``runtime_env`` in clear into its session logs
(runtime_env_agent.log, ray-data.log) and its dashboard state, so only non-secret variables go
there. Credentials reach the workers in one of two ways, never through a ``runtime_env``:

* from the node's own environment: a local Ray started by the driver hands the driver's
  environment to every worker; cluster nodes get theirs from infra/catalogue.env, a Kubernetes
  Secret or an instance role;
* inside pickled task, actor or training-loop arguments as a :class:`WorkerEnv`, which the worker
  applies before it touches storage (its ``repr`` and ``str`` show names only).

:func:`worker_env` makes the split.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .storage import redact, s3_env

SECRET_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_TOKEN",
                   "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
"""Never put into a Ray ``runtime_env``; they travel in a :class:`WorkerEnv`."""
PLAIN_ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_S3_ENDPOINT_URL")
"""Passed to workers through the ``runtime_env`` unless their value holds a credential
(e.g. ``http://user:password@mlflow``): then they travel in the :class:`WorkerEnv` too."""


@dataclass(frozen=True)
class WorkerEnv:
    """Environment variables (credentials) to set in a Ray worker process before it touches storage.

    Travels pickled inside task arguments, never in a ``runtime_env`` (Ray logs those in clear);
    its ``repr`` shows names only.
    """

    values: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"WorkerEnv({', '.join(f'{k}=***' for k in sorted(self.values))})"

    def apply(self) -> None:
        """Set the variables in this process (storage clients created afterwards use them)."""
        for k, v in self.values.items():
            if os.environ.get(k) != v:
                os.environ[k] = v


def worker_env(**overrides: str | None) -> tuple[dict[str, str], WorkerEnv]:
    """(non-secret variables for ``runtime_env.env_vars``, secret ones wrapped for task arguments).

    Takes the S3 variables (:func:`~survey_estimator.storage.s3_env`), :data:`PLAIN_ENV_VARS` and
    :data:`SECRET_ENV_VARS` set in this process, then ``overrides`` (None or empty: not set).
    A variable is secret when it is named in :data:`SECRET_ENV_VARS` or when
    :func:`~survey_estimator.storage.redact` would mask part of its value.
    """
    env = {**s3_env(), **{k: os.environ[k] for k in PLAIN_ENV_VARS + SECRET_ENV_VARS if os.environ.get(k)}}
    env.update({k: v for k, v in overrides.items() if v})
    env.setdefault("TQDM_DISABLE", os.environ.get("TQDM_DISABLE", "0"))
    secret = {k: v for k, v in env.items() if k in SECRET_ENV_VARS or redact(v) != v}
    plain = {k: v for k, v in env.items() if k not in secret}
    return plain, WorkerEnv(secret)


def ensure_ray(num_cpus: int | None = None, address: str | None = None):
    """Connect to Ray the same way for every job; returns the ``ray`` module.

    * already initialised (e.g. a test's cluster): used as it is;
    * ``address`` / ``$RAY_ADDRESS`` (a cluster, or inside ``ray job submit``): connect to it;
    * else start a local Ray with ``num_cpus`` CPUs (default: all), no dashboard, and
      ``RAY_AUTH_MODE=disabled`` unless set (a local ``ray.init()`` that writes an auth token
      breaks an earlier ``ray start`` cluster); when Ray finds a cluster already running on
      this machine (``ray start``) and refuses resource arguments, join it.

    The job's ``runtime_env`` carries only the non-secret variables of :func:`worker_env`
    (endpoint, region, MLflow URIs); credentials never (see the module docstring). On an existing
    cluster ``num_cpus`` is not applied (callers use it to bound the tasks they keep in flight).
    """
    import ray

    if ray.is_initialized():
        return ray
    kwargs = {"runtime_env": {"env_vars": worker_env()[0]}, "configure_logging": False, "log_to_driver": True}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
        return ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    except ValueError as exc:  # Ray found a running cluster and refuses resource arguments
        if "existing cluster" not in str(exc):
            raise
        ray.init(**kwargs)
    return ray
