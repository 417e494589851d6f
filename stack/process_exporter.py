"""CPU and memory of the native stack's components, as Prometheus metrics.

In docker compose, cAdvisor reports CPU/memory per container. The native stack
has no containers: each component is a process group whose leader PID is
recorded in `<state>/pids/<name>.pid` by stackctl.py. This exporter reads
/proc on every scrape and sums each group, so the Resources dashboard shows the
native stack the way it shows containers:

    helical_process_cpu_seconds_total{name="airflow-worker"}
    helical_process_resident_memory_bytes{name="airflow-worker"}
    helical_process_count{name="airflow-worker"}

Runner jobs started by the worker (local backend) belong to the worker's group,
so the worker's numbers include the model work it runs.

    python stack/process_exporter.py --pids <state>/pids --web-address 127.0.0.1:18703
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _proc_stats() -> dict[int, tuple[int, float, int]]:
    """pid -> (process group, cpu seconds, resident bytes) for every live process."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited between listing and reading
        if fields[0] == "Z":
            continue
        pgid = int(fields[2])
        cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
        rss = int(fields[21]) * PAGE_SIZE
        stats[int(entry.name)] = (pgid, cpu, rss)
    return stats


def collect(pids_dir: Path) -> str:
    groups: dict[str, int] = {}
    for pidfile in sorted(pids_dir.glob("*.pid")):
        try:
            groups[pidfile.stem] = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    totals = {name: [0.0, 0, 0] for name in groups}
    by_pgid = {pgid: name for name, pgid in groups.items()}
    for pgid, cpu, rss in _proc_stats().values():
        name = by_pgid.get(pgid)
        if name is not None:
            totals[name][0] += cpu
            totals[name][1] += rss
            totals[name][2] += 1
    lines = [
        "# HELP helical_process_cpu_seconds_total CPU time of a stack component's process group.",
        "# TYPE helical_process_cpu_seconds_total counter",
        *(
            f'helical_process_cpu_seconds_total{{name="{n}"}} {t[0]:.2f}'
            for n, t in totals.items()
            if t[2]
        ),
        "# HELP helical_process_resident_memory_bytes Resident memory of a component's process group.",
        "# TYPE helical_process_resident_memory_bytes gauge",
        *(
            f'helical_process_resident_memory_bytes{{name="{n}"}} {t[1]}'
            for n, t in totals.items()
            if t[2]
        ),
        "# HELP helical_process_count Live processes in a component's process group.",
        "# TYPE helical_process_count gauge",
        *(f'helical_process_count{{name="{n}"}} {t[2]}' for n, t in totals.items() if t[2]),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="CPU/memory of the native stack's process groups")
    parser.add_argument("--pids", type=Path, required=True, help="stackctl's pids directory")
    parser.add_argument("--web-address", default="127.0.0.1:18703", help="HTTP host:port")
    args = parser.parse_args(argv)
    host, _, port = args.web_address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = collect(args.pids).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer((host, int(port)), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


if __name__ == "__main__":
    main()
