"""Pick the execution backend from configuration and run one runner command on it.

``HELICAL_BACKEND``: ``local`` (default: subprocess in the runner venv),
``docker`` (DockerOperator) or ``kubernetes`` (KubernetesPodOperator). The
DAG is the same for all three; only this dispatch changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import containers, local, runner

BACKEND_ENV = "HELICAL_BACKEND"
BACKENDS = ("local", "docker", "kubernetes")


def backend_name() -> str:
    name = (os.environ.get(BACKEND_ENV) or "local").strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={name!r} is not one of {', '.join(BACKENDS)}")
    return name


def run_runner(
    argv: list[str],
    *,
    what: str,
    context: Any,
    profile: dict[str, Any] | None = None,
    timeout_s: int | None = None,
    want_json: bool = False,
    local_paths: list[str] = (),
    output_root: str | None = None,
) -> Any:
    """Run ``helical-runner <argv>`` on the configured backend.

    :param what: short description for error messages, e.g. ``embed pbmc/geneformer 0:500``.
    :param context: the Airflow task context (container operators execute within it).
    :param profile: the model profile (resources, GPUs); ``None`` for light commands.
    :param timeout_s: the profile's timeout for this command.
    :param want_json: parse the runner's stdout as one JSON object and return it.
    :param local_paths: dataset URIs whose folders a container must see read-only.
    :param output_root: the run's output folder, mounted read-write in a container.
    :returns: the parsed JSON (``want_json``) or the runner's stdout.
    :raises RunnerTransientError: exit 75 or killed: Airflow retries with backoff.
    :raises AirflowFailException: exit 2 or 1: fail now, no retry.
    """
    kind = backend_name()
    env = runner.passthrough_env()
    if kind == "local":
        result = local.run([runner.runner_bin(), *argv], env=env, timeout_s=timeout_s)
        runner.raise_for_exit(result.code, what=what, message=result.error)
        return json.loads(result.stdout) if want_json else result.stdout
    task_id = context["ti"].task_id if context else "helical_runner"
    profile = profile or {"resources": {"cpu": "1", "memory": "4Gi"}}
    if kind == "docker":
        from airflow.providers.docker.exceptions import DockerContainerFailedException

        op = containers.docker_operator(
            task_id=task_id,
            argv=argv,
            profile=profile,
            env=env,
            data_dir=runner.data_folder(list(local_paths)),
            output_dir=Path(output_root) if output_root and "://" not in output_root else None,
            want_json=want_json,
        )
        try:
            out = op.execute(context)
        except DockerContainerFailedException as exc:
            code = containers.docker_exit_code(exc)
            runner.raise_for_exit(
                code if code is not None else runner.EXIT_BUG, what=what, message=str(exc)
            )
            raise
        return json.loads(out) if want_json else out
    op = containers.kubernetes_operator(
        task_id=task_id,
        argv=argv,
        profile=profile,
        env=env,
        timeout_s=timeout_s,
        want_json=want_json,
    )
    try:
        return op.execute(context)
    except Exception as exc:
        code = containers.pod_exit_code(getattr(op, "remote_pod", None))
        if code is None:
            # Never started or vanished (eviction, node loss, startup timeout): worth a retry.
            raise runner.RunnerTransientError(f"{what}: runner pod did not finish: {exc}") from exc
        runner.raise_for_exit(code, what=what, message=str(exc).splitlines()[0])
        raise
