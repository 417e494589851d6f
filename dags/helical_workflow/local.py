"""The ``local`` backend: the runner CLI as a subprocess, its output in the task log."""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field

from airflow.sdk.exceptions import AirflowTaskTimeout

LOG = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished runner process left behind."""

    code: int
    stdout: str
    # The runner's own one-line error (``helical-runner: error: ...``), if it printed one.
    error: str = ""
    stderr_tail: list[str] = field(default_factory=list)


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The worker's environment without Airflow's own settings (DB URLs, JWT secrets)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(extra)
    return env


def run(argv: list[str], *, env: dict[str, str], timeout_s: float | None = None) -> RunResult:
    """Run ``argv``, logging stdout and stderr line by line as they come.

    The runner gets its own process group so that a timeout or a killed task
    takes every child (helical's data loaders) down with it.

    :param argv: full command, executable first.
    :param env: variables added to the cleaned worker environment.
    :param timeout_s: kill the process group after this long and raise
        ``AirflowTaskTimeout`` (retried like Airflow's own execution timeout).
    """
    LOG.info("running: %s", " ".join(argv))
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=_clean_env(env),
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s if timeout_s else None
    out_lines: list[str] = []
    err_tail: list[str] = []
    error = ""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    try:
        while sel.get_map():
            if deadline and time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AirflowTaskTimeout(
                    f"runner exceeded the profile's timeout ({timeout_s:.0f} s)"
                )
            for key, _ in sel.select(timeout=1.0):
                line = key.fileobj.readline()
                if not line:
                    sel.unregister(key.fileobj)
                    continue
                text = line.decode(errors="replace").rstrip("\n")
                LOG.info("[runner %s] %s", key.data, text)
                if key.data == "stdout":
                    out_lines.append(text)
                else:
                    err_tail = [*err_tail[-49:], text]
                    if text.startswith("helical-runner:"):
                        error = text
        code = proc.wait()
    finally:
        if proc.poll() is None:
            # The task was stopped (timeout, mark-failed, SIGTERM): stop the runner too.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        sel.close()
    LOG.info("runner exited with %s", code)
    return RunResult(code=code, stdout="\n".join(out_lines), error=error, stderr_tail=err_tail)
