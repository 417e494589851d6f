"""What the three runner operators (local, Docker, Kubernetes) have in common.

Each backend's operator is a thin subclass of Airflow's own operator for that
platform plus :class:`RunnerStep`, which holds the fields of one runner job
(see :mod:`helical_workflow.jobs`), applies the job's time limit and turns a
result or an exit code into what the DAG expects:

* success: the runner's JSON (``want_json``) and/or the job's ``result``, as the
  task's return value (XCom); with outlets, each asset event's ``extra``;
* exit 2 (bad input) or 1 (bug): ``AirflowFailException``, no retry;
* exit 75 or killed: ``RunnerTransientError``, retried with backoff;
* either way the runner's one-line error is in the task log and the exception.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from . import runner

# Beyond the profile's limit: time for the runner to stop cleanly and the pod/container to go.
TIMEOUT_GRACE_S = 300
# The Airflow-side fields of a runner job (every operator accepts them).
STEP_FIELDS = (
    "runner_args",
    "job_label",
    "want_json",
    "job_result",
    "data_paths",
    "output_root",
    "job_resources",
    "timeout_s",
)


class RunnerStep:
    """Mixin for the runner operators; call :meth:`_init_step` after the base ``__init__``."""

    def _init_step(
        self,
        *,
        runner_args: list[str],
        job_label: str,
        want_json: bool,
        job_result: dict[str, Any] | None,
        data_paths: list[str] | None,
        output_root: str | None,
        job_resources: dict[str, Any] | None,
        timeout_s: int | None,
    ) -> None:
        self.runner_args = [str(a) for a in runner_args]
        self.job_label = job_label
        self.want_json = want_json
        self.job_result = job_result
        self.data_paths = list(data_paths or [])
        self.output_root = output_root
        self.job_resources = job_resources or {}
        self.timeout_s = timeout_s
        if timeout_s:
            # Each shard's own limit (the mapped task's partial one covers the longest profile).
            self.execution_timeout = timedelta(seconds=int(timeout_s) + TIMEOUT_GRACE_S)

    @property
    def what(self) -> str:
        """Short description for messages: ``embed pbmc/geneformer/0:500``."""
        return f"{self.runner_args[0] if self.runner_args else 'runner'} {self.job_label}"

    @property
    def returns_value(self) -> bool:
        return bool(self.want_json or self.job_result)

    def _finish(self, context: Any, out: Any) -> Any:
        """The step's return value from the backend's output; asset events get it as extra."""
        value: Any = None
        if self.want_json:
            value = runner.parse_json_output(out)
        if self.job_result:
            value = {**(value if isinstance(value, dict) else {}), **self.job_result}
        outlet_events = context.get("outlet_events") if context else None
        if outlet_events is not None and isinstance(value, dict):
            for outlet in getattr(self, "outlets", None) or []:
                outlet_events[outlet].extra = value
        return value

    def _fail(self, code: int | None, message: str) -> None:
        """Raise what the runner's exit code means (never returns)."""
        runner.raise_for_exit(
            runner.EXIT_BUG if code is None else code, what=self.what, message=message
        )
        raise AssertionError(f"{self.what}: exit {code} did not raise")  # pragma: no cover
