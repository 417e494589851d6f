"""The ``local`` backend: the runner CLI as a subprocess of the Airflow worker.

Built on Airflow's own ``SubprocessHook`` (standard provider): the runner runs
in its own process group in a fresh temporary folder, every line it prints
goes to the task log, and ``on_kill`` (task marked failed, timeout, worker
shutdown) sends SIGTERM to the whole group.
"""

from __future__ import annotations

import os
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.providers.standard.hooks.subprocess import SubprocessHook
from airflow.sdk import BaseOperator

from . import runner
from .steps import RunnerStep

RESULT_FILE = "result.json"


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The worker's environment without Airflow's own settings (DB URLs, JWT secrets)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(extra)
    return env


def command(runner_bin: str, argv: list[str], *, want_json: bool) -> list[str]:
    """The command line: the runner itself, or (JSON steps) the runner with its stdout
    in ``result.json`` of the working folder, its exit code kept."""
    if not want_json:
        return [runner_bin, *argv]
    return ["/bin/sh", "-c", f'exec "$0" "$@" > {RESULT_FILE}', runner_bin, *argv]


class LocalRunnerOperator(RunnerStep, BaseOperator):
    """One ``helical-runner`` command on the worker (see :mod:`helical_workflow.jobs`)."""

    ui_color = "#e8f0d8"

    def __init__(
        self,
        *,
        runner_args: list[str],
        job_label: str = "",
        want_json: bool = False,
        job_result: dict[str, Any] | None = None,
        data_paths: list[str] | None = None,
        output_root: str | None = None,
        job_resources: dict[str, Any] | None = None,
        timeout_s: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_step(
            runner_args=runner_args,
            job_label=job_label,
            want_json=want_json,
            job_result=job_result,
            data_paths=data_paths,
            output_root=output_root,
            job_resources=job_resources,
            timeout_s=timeout_s,
        )

    @cached_property
    def hook(self) -> SubprocessHook:
        return SubprocessHook()

    def execute(self, context: Any) -> Any:
        argv = command(runner.runner_bin(), self.runner_args, want_json=self.want_json)
        with tempfile.TemporaryDirectory(prefix="helical-runner-") as cwd:
            done = self.hook.run_command(argv, env=clean_env(runner.passthrough_env()), cwd=cwd)
            if done.exit_code != 0:
                self._fail(done.exit_code, runner.error_line([done.output]))
            out = (Path(cwd) / RESULT_FILE).read_text() if self.want_json else None
        return self._finish(context, out)

    def on_kill(self) -> None:
        self.hook.send_sigterm()
