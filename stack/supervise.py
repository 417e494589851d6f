"""Keep one command running: the native stack's `restart: unless-stopped`.

Airflow's scheduler, dag-processor and triggerer exit when the metadata
database goes away at the wrong moment (outside their retried sections) and
rely on a supervisor to start them again: Kubernetes and docker compose do it
with a restart policy, the native stack with this wrapper.

    python stack/supervise.py --name airflow-scheduler -- airflow scheduler

The wrapper and its child share one process group, so `stack.sh stop` (a
SIGTERM to the group) stops both, and the wrapper then exits instead of
restarting. A child that exits by itself, or is killed alone, is restarted
after a backoff (1 s doubling to 30 s, reset after a minute of running).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="restart a command whenever it exits")
    parser.add_argument("--name", required=True, help="component name, for the log")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    stopping = False

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True  # the child got the same signal from the group; wait for it

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backoff = 1.0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command)
        while True:
            try:
                code = child.wait()
                break
            except InterruptedError:
                continue
        if stopping:
            return 0
        if time.monotonic() - started > 60:
            backoff = 1.0
        print(
            f"[supervise] {args.name} exited with {code}; restarting in {backoff:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)
        if stopping:
            return 0
        backoff = min(backoff * 2, 30.0)


if __name__ == "__main__":
    sys.exit(main())
