"""A small StatsD receiver for the native stack, exposing Prometheus metrics.

The Prometheus StatsD exporter exists only as a container image, and the native
stack runs without containers. This receiver reads the very same mapping file
(observability/statsd/mapping.yml) and applies the subset of its semantics
that the file uses: ordered glob (or regex) rules, `$n` captures in names and
labels, `action: drop`, timers as histograms in seconds with the configured
buckets. Unmapped names are escaped the way the exporter escapes them, so the
series a dashboard queries are the same in both stacks.

    python stack/statsd_receiver.py --mapping observability/statsd/mapping.yml \
        --statsd-address 127.0.0.1:18725 --web-address 127.0.0.1:18702

The parser and the mapping are ours (the exporter's own code is Go); the
exposition and the HTTP server are prometheus_client's (present in the Airflow
environment, like PyYAML).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.metrics_core import Metric

log = logging.getLogger("statsd_receiver")

# The exporter's own default buckets, used when the mapping file sets none.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_CAPTURE = re.compile(r"\$\{?(\d+)\}?")
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True)
class Rule:
    """One mapping rule, compiled."""

    pattern: re.Pattern[str]
    name: str
    labels: dict[str, str]
    drop: bool
    buckets: tuple[float, ...]


@dataclass(frozen=True)
class Mapped:
    """What one StatsD name becomes: a Prometheus name + labels (or nothing)."""

    name: str
    labels: tuple[tuple[str, str], ...]


def _glob_to_regex(glob: str) -> re.Pattern[str]:
    # A glob `*` stands for exactly one dot-separated component (or part of one).
    parts = (re.escape(p) for p in glob.split("*"))
    return re.compile("^" + "([^.]*)".join(parts) + "$")


def _expand(template: str, match: re.Match[str]) -> str:
    return _CAPTURE.sub(lambda m: match.group(int(m.group(1))) or "", template)


def escape_name(name: str) -> str:
    """Turn an unmapped StatsD name into a valid Prometheus name (exporter style)."""
    escaped = _INVALID_NAME_CHARS.sub("_", name)
    return "_" + escaped if escaped[:1].isdigit() else escaped


class Mapper:
    """Applies a statsd_exporter mapping file: ordered rules, first match wins."""

    def __init__(self, config: dict) -> None:
        defaults = config.get("defaults") or {}
        default_type = defaults.get("match_type", "glob")
        default_buckets = tuple(
            (defaults.get("histogram_options") or {}).get("buckets") or DEFAULT_BUCKETS
        )
        self.rules: list[Rule] = []
        for raw in config.get("mappings") or []:
            kind = raw.get("match_type", default_type)
            if kind == "glob":
                pattern = _glob_to_regex(raw["match"])
            elif kind == "regex":
                pattern = re.compile(raw["match"])
            else:
                raise ValueError(f"unsupported match_type {kind!r} in rule {raw['match']!r}")
            buckets = (raw.get("histogram_options") or {}).get("buckets") or default_buckets
            self.rules.append(
                Rule(
                    pattern=pattern,
                    name=raw.get("name", ""),
                    labels={str(k): str(v) for k, v in (raw.get("labels") or {}).items()},
                    drop=raw.get("action") == "drop",
                    buckets=tuple(float(b) for b in buckets),
                )
            )
        self.default_buckets = tuple(float(b) for b in default_buckets)

    @classmethod
    def from_file(cls, path: str | Path) -> Mapper:
        return cls(yaml.safe_load(Path(path).read_text()))

    def map(self, statsd_name: str) -> tuple[Mapped | None, tuple[float, ...]]:
        """Return (series, histogram buckets); series is None for a dropped name."""
        for rule in self.rules:
            match = rule.pattern.match(statsd_name)
            if not match:
                continue
            if rule.drop:
                return None, rule.buckets
            labels = tuple(sorted((k, _expand(v, match)) for k, v in rule.labels.items()))
            return Mapped(escape_name(_expand(rule.name, match)), labels), rule.buckets
        return Mapped(escape_name(statsd_name), ()), self.default_buckets


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1


class Registry:
    """Series received so far; one Prometheus type per metric name."""

    def __init__(self, mapper: Mapper) -> None:
        self.mapper = mapper
        self.lock = threading.Lock()
        self.types: dict[str, str] = {}
        self.values: dict[str, dict[tuple, float]] = {}
        self.histograms: dict[str, dict[tuple, Histogram]] = {}
        self.lines_received = 0
        self.lines_invalid = 0
        self.type_conflicts = 0

    def ingest_packet(self, packet: str) -> None:
        for line in packet.splitlines():
            if line.strip():
                self.ingest_line(line.strip())

    def ingest_line(self, line: str) -> None:
        with self.lock:
            self.lines_received += 1
            parsed = _parse_line(line)
            if parsed is None:
                self.lines_invalid += 1
                log.debug("invalid StatsD line %r", line)
                return
            name, raw_value, kind, rate, tags = parsed
            series, buckets = self.mapper.map(name)
            if series is None:
                return
            labels = tuple(sorted(dict(series.labels + tags).items()))
            prom_type = {"c": "counter", "g": "gauge"}.get(kind, "histogram")
            if self.types.setdefault(series.name, prom_type) != prom_type:
                # The exporter refuses a name seen with two types; so do we.
                self.type_conflicts += 1
                return
            if kind == "c":
                series_values = self.values.setdefault(series.name, {})
                series_values[labels] = series_values.get(labels, 0.0) + float(raw_value) / rate
            elif kind == "g":
                series_values = self.values.setdefault(series.name, {})
                if raw_value[:1] in "+-":
                    series_values[labels] = series_values.get(labels, 0.0) + float(raw_value)
                else:
                    series_values[labels] = float(raw_value)
            else:
                value = float(raw_value) / 1000.0 if kind == "ms" else float(raw_value)
                per_name = self.histograms.setdefault(series.name, {})
                per_name.setdefault(labels, Histogram(buckets)).observe(value)

    def collect(self) -> Iterator[Metric]:
        """Every series received so far, for prometheus_client (a custom collector)."""
        with self.lock:
            for name in sorted(self.types):
                kind = self.types[name]
                if kind == "histogram":
                    family = Metric(name, name, "histogram")
                    for labels, hist in sorted(self.histograms.get(name, {}).items()):
                        base = dict(labels)
                        bounds = [*map(_fmt, hist.buckets), "+Inf"]
                        for le, count in zip(bounds, [*hist.counts, hist.count], strict=True):
                            family.add_sample(f"{name}_bucket", {**base, "le": le}, count)
                        family.add_sample(f"{name}_sum", base, hist.total)
                        family.add_sample(f"{name}_count", base, hist.count)
                else:
                    if kind == "counter" and name.endswith("_total"):
                        family = Metric(name.removesuffix("_total"), name, "counter")
                    else:
                        # prometheus_client would append _total to a counter's name;
                        # the exporter keeps the mapped name, so it stays untyped here.
                        family = Metric(name, name, "gauge" if kind == "gauge" else "unknown")
                    for labels, value in sorted(self.values.get(name, {}).items()):
                        family.add_sample(name, dict(labels), value)
                yield family
            for stat, value in (("lines", self.lines_received),
                                ("lines_invalid", self.lines_invalid),
                                ("type_conflicts", self.type_conflicts)):  # fmt: skip
                family = Metric(f"statsd_receiver_{stat}", f"StatsD {stat} seen", "counter")
                family.add_sample(f"statsd_receiver_{stat}_total", {}, value)
                yield family

    def exposition(self) -> str:
        """Prometheus text format, as the HTTP endpoint serves it."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry).decode()


def _parse_line(line: str):
    """`name:value|type[|@rate][|#k:v,...]` -> parts, or None when malformed."""
    name, sep, rest = line.partition(":")
    fields = rest.split("|")
    if not sep or not name or len(fields) < 2:
        return None
    raw_value, kind = fields[0], fields[1]
    if kind not in {"c", "g", "ms", "h", "d"}:
        return None
    rate, tags = 1.0, ()
    for extra in fields[2:]:
        if extra.startswith("@"):
            rate = float(extra[1:]) or 1.0
        elif extra.startswith("#"):
            pairs = (t.split(":", 1) for t in extra[1:].split(",") if ":" in t)
            tags = tuple((escape_name(k), v) for k, v in pairs)
    try:
        value = float(raw_value)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return name, raw_value, kind, rate, tags


def _fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def _split_address(address: str) -> tuple[str, int]:
    """``host:port``; ``:port`` (statsd_exporter's form) means every interface."""
    host, _, port = address.rpartition(":")
    return host or "0.0.0.0", int(port)


def serve(mapping: Path, statsd_address: str, web_address: str) -> None:
    registry = Registry(Mapper.from_file(mapping))
    prometheus = CollectorRegistry(auto_describe=False)
    prometheus.register(registry)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(_split_address(statsd_address))
    host, port = _split_address(web_address)
    start_http_server(port, addr=host, registry=prometheus)
    log.info("statsd on udp://%s, metrics on http://%s/metrics", statsd_address, web_address)
    while True:
        data, _ = udp.recvfrom(65535)
        registry.ingest_packet(data.decode("utf-8", "replace"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The second spelling of each flag is prom/statsd-exporter's, so the compose
    # file's command line runs this receiver unchanged (docker-compose.offline.yml).
    parser.add_argument(
        "--mapping", "--statsd.mapping-config", type=Path, required=True,
        help="statsd_exporter mapping YAML",
    )  # fmt: skip
    parser.add_argument(
        "--statsd-address", "--statsd.listen-udp", default="127.0.0.1:9125",
        help="UDP host:port (':port' listens on every interface)",
    )  # fmt: skip
    parser.add_argument(
        "--web-address", "--web.listen-address", default="127.0.0.1:9102",
        help="HTTP host:port (':port' listens on every interface)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(args.mapping, args.statsd_address, args.web_address)


if __name__ == "__main__":
    main()
