"""Per-container CPU and memory for Prometheus, in cAdvisor's metric names, read
from the Docker API: the compose stack's offline stand-in for cAdvisor, which
Debian does not package (docker-compose.offline.yml; docs/local-stack.md).

    cadvisor_standin.py --docker=tcp://docker-proxy-readonly:2375 [--port 8080]
        [--housekeeping_interval=10s] [--storage_duration=2m] [cAdvisor's other flags]

Exported on ``:<port>/metrics`` for every container the engine runs, labelled as
cAdvisor labels them (``id``, ``name``, ``image`` and ``container_label_<label>``):

- ``container_cpu_usage_seconds_total``      cumulative CPU time (the cgroup's usage)
- ``container_memory_usage_bytes``           memory in use, page cache included
- ``container_memory_working_set_bytes``     usage less inactive file cache
- ``container_spec_memory_limit_bytes``      the memory limit (0: none)
- ``container_last_seen``                    when the container was last sampled

The engine's stats API (``GET /containers/{id}/stats?stream=false``) gives the
same cgroup counters cAdvisor reads from ``/sys/fs/cgroup``; going through the
read-only socket proxy, this needs no host mount at all. New containers are
sampled within a second of starting (runner steps can be short); all running ones
every housekeeping interval. A container that exited keeps its last sample for
``--storage_duration`` (cAdvisor's in-memory history), so a short runner job is
still scraped after it ended.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import re
import sys
import threading
import time
from urllib.parse import urlparse

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily

LOG = logging.getLogger("cadvisor-standin")
LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def seconds(value: str) -> float:
    """``10s``, ``2m``, ``1h`` or plain seconds."""
    match = re.fullmatch(r"([0-9.]+)(ms|s|m|h)?", value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {value!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    return float(match.group(1)) * scale


class DockerAPI:
    def __init__(self, url: str):
        parsed = urlparse(url)
        if parsed.scheme not in ("tcp", "http"):
            raise SystemExit(f"cadvisor-standin: --docker must be tcp://host:port, got {url!r}")
        self.host, self.port = parsed.hostname, parsed.port or 2375

    def get(self, path: str):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise OSError(f"GET {path}: HTTP {resp.status} {body[:200]!r}")
            return json.loads(body)
        finally:
            conn.close()


class Samples:
    """The last sample of every container seen, kept for ``storage_s`` after it went."""

    def __init__(self, api: DockerAPI, *, housekeeping_s: float, storage_s: float):
        self.api = api
        self.housekeeping_s = housekeeping_s
        self.storage_s = storage_s
        self.lock = threading.Lock()
        self.samples: dict[str, dict] = {}

    def sample(self, summary: dict) -> None:
        cid = summary["Id"]
        try:
            stats = self.api.get(f"/containers/{cid}/stats?stream=false&one-shot=true")
        except (OSError, ValueError) as exc:
            LOG.debug("stats of %s: %s", cid[:12], exc)
            return
        memory = stats.get("memory_stats") or {}
        usage = float(memory.get("usage") or 0)
        detail = memory.get("stats") or {}
        inactive = float(detail.get("inactive_file", detail.get("total_inactive_file", 0)) or 0)
        cpu = float(((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage", 0))
        names = summary.get("Names") or [stats.get("name", "")]
        labels = {
            "id": f"/docker/{cid}",
            "name": names[0].lstrip("/"),
            "image": summary.get("Image", ""),
        }
        for key, value in (summary.get("Labels") or {}).items():
            labels["container_label_" + LABEL_CHARS.sub("_", key)] = value
        with self.lock:
            self.samples[cid] = {
                "labels": labels,
                "cpu_s": cpu / 1e9,
                "usage": usage,
                "working_set": max(usage - inactive, 0.0),
                "limit": float(memory.get("limit") or 0),
                "seen": time.time(),
                "running": True,
            }

    def loop(self) -> None:
        last_full = 0.0
        while True:
            try:
                running = self.api.get("/containers/json")
            except (OSError, ValueError) as exc:
                LOG.warning("listing containers: %s", exc)
                time.sleep(1)
                continue
            now = time.time()
            full = now - last_full >= self.housekeeping_s
            ids = {c["Id"] for c in running}
            with self.lock:
                known = set(self.samples)
                for cid, sample in list(self.samples.items()):
                    if cid not in ids:
                        sample["running"] = False
                        if now - sample["seen"] > self.storage_s:
                            del self.samples[cid]
            for summary in running:
                if full or summary["Id"] not in known:
                    self.sample(summary)
            if full:
                last_full = now
            time.sleep(1)

    def collect(self):
        with self.lock:
            samples = list(self.samples.values())
        keys = sorted({k for s in samples for k in s["labels"]})
        families = {
            "cpu_s": CounterMetricFamily(
                "container_cpu_usage_seconds",
                "Cumulative cpu time consumed in seconds.",
                labels=keys,
            ),
            "usage": GaugeMetricFamily(
                "container_memory_usage_bytes", "Current memory usage in bytes.", labels=keys
            ),
            "working_set": GaugeMetricFamily(
                "container_memory_working_set_bytes", "Current working set in bytes.", labels=keys
            ),
            "limit": GaugeMetricFamily(
                "container_spec_memory_limit_bytes", "Memory limit for the container.", labels=keys
            ),
            "seen": GaugeMetricFamily(
                "container_last_seen", "Last time a container was seen by the exporter", labels=keys
            ),
        }
        for s in samples:
            values = [s["labels"].get(k, "") for k in keys]
            for field, family in families.items():
                family.add_metric(values, s[field])
        yield from families.values()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docker", required=True, help="tcp://host:port of a Docker API proxy")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--housekeeping_interval", type=seconds, default=seconds("10s"))
    parser.add_argument("--storage_duration", type=seconds, default=seconds("2m"))
    # cAdvisor flags a compose file passes that mean nothing here (Docker only, the
    # metric set above) are accepted so the same command line runs.
    args, ignored = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if ignored:
        LOG.info("cAdvisor flags without effect here: %s", " ".join(ignored))
    samples = Samples(
        DockerAPI(args.docker),
        housekeeping_s=args.housekeeping_interval,
        storage_s=args.storage_duration,
    )
    REGISTRY.register(samples)
    start_http_server(args.port)
    LOG.info("serving :%d/metrics, docker %s", args.port, args.docker)
    samples.loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
