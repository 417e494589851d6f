"""Pick the execution backend when the DAG is parsed.

``HELICAL_BACKEND``: ``local`` (default: :class:`~helical_workflow.local.LocalRunnerOperator`,
a subprocess through Airflow's ``SubprocessHook``), ``docker``
(:class:`~helical_workflow.containers.RunnerDockerOperator`) or ``kubernetes``
(:class:`~helical_workflow.containers.RunnerPodOperator`). The graph is the
same for all three; only the operator class of the runner steps changes.
"""

from __future__ import annotations

import os

BACKEND_ENV = "HELICAL_BACKEND"
BACKENDS = ("local", "docker", "kubernetes")


def backend_name() -> str:
    name = (os.environ.get(BACKEND_ENV) or "local").strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={name!r} is not one of {', '.join(BACKENDS)}")
    return name


def runner_operator() -> type:
    """The operator class that runs ``helical-runner`` steps on the configured backend."""
    kind = backend_name()
    if kind == "local":
        from .local import LocalRunnerOperator

        return LocalRunnerOperator
    from . import containers

    return containers.RunnerDockerOperator if kind == "docker" else containers.RunnerPodOperator


def gives_gpus() -> bool:
    """Whether runner jobs get the GPUs their profiles ask for: pods always, containers
    when configured (:func:`~helical_workflow.containers.docker_gpus`); the local
    backend runs on the worker's own devices, planned as CPU (the slower figure)."""
    kind = backend_name()
    if kind == "local":
        return False
    if kind == "docker":
        from . import containers

        return containers.docker_gpus()
    return True


def executor_slots() -> int:
    """Tasks the executor runs at once (Airflow's ``core.parallelism``): the planner
    cuts work into at least this many embed tasks when there is enough of it."""
    from airflow.configuration import conf

    return max(1, conf.getint("core", "parallelism", fallback=1))
