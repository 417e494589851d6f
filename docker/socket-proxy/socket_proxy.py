"""A Docker API socket proxy: an allow-list by API section and method, and the
runner-only authorization policy on every request (docker/authz/runner-only.rego).

    socket_proxy.py [--listen :2375] [--socket /var/run/docker.sock]

Settings by environment, the names of the common socket proxies
(tecnativa/docker-socket-proxy), so one compose file drives either:

- a section (``CONTAINERS``, ``IMAGES``, ``INFO``, ``VERSION``, ``EVENTS``, ``PING``,
  ``EXEC``, ``VOLUMES``, ``NETWORKS``, ``SYSTEM``, ``BUILD``, ...) set to 1 allows its
  paths; ``PING``, ``VERSION`` and ``EVENTS`` are on unless set to 0, every other
  section is off unless set to 1;
- ``POST=1`` allows the writing methods (POST, PUT) on allowed sections, ``DELETE=1``
  allows DELETE; without them only GET and HEAD pass.

``HELICAL_AUTHZ_POLICY`` (a Rego file) adds the body check the path filter cannot
do: the request (Method, Path, Body: the engine authorization plugin's input) must
be allowed by ``data.docker.authz.allow``. Its site data come from
``HELICAL_AUTHZ_IMAGE``, ``HELICAL_AUTHZ_READ_ONLY``, ``HELICAL_AUTHZ_READ_WRITE`` and
``HELICAL_AUTHZ_NETWORKS`` (comma-separated lists). So a client of the launcher
proxy can start runner containers as the DAG does, and no privileged container, no
host bind mount outside the data/model/output folders and no other image.

One request per client connection: the proxy adds ``Connection: close`` (an
upgraded ``attach`` stream stays raw until either side closes), so no second
request can follow an allowed one unchecked. A refusal is HTTP 403 with a JSON
``message`` that says what was refused, as the engine's own errors do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import socket
import socketserver
import sys
import threading

LOG = logging.getLogger("socket-proxy")
MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024
VERSION_PREFIX = re.compile(r"^/v[0-9.]+")
# API sections by first path segment, as the common proxies name them.
SECTIONS = {
    "_ping": "PING", "version": "VERSION", "events": "EVENTS", "info": "INFO",
    "containers": "CONTAINERS", "images": "IMAGES", "exec": "EXEC", "volumes": "VOLUMES",
    "networks": "NETWORKS", "services": "SERVICES", "tasks": "TASKS", "nodes": "NODES",
    "swarm": "SWARM", "secrets": "SECRETS", "configs": "CONFIGS", "plugins": "PLUGINS",
    "system": "SYSTEM", "build": "BUILD", "commit": "COMMIT", "auth": "AUTH",
    "distribution": "DISTRIBUTION", "session": "SESSION",
}  # fmt: skip
DEFAULT_ON = {"PING", "VERSION", "EVENTS"}


class Refused(Exception):
    """A request the proxy does not forward; the message says why."""


def _flag(env: dict[str, str], name: str) -> bool:
    default = "1" if name in DEFAULT_ON else "0"
    return env.get(name, default).strip() == "1"


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class Policy:
    """What the proxy lets through, read once from the environment."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.rego_module = None
        path = env.get("HELICAL_AUTHZ_POLICY", "").strip()
        if path:
            with open(path, encoding="utf-8") as fh:
                self.rego_module = fh.read()
            self.rego_data = json.dumps(
                {
                    "helical": {
                        "image": env.get("HELICAL_AUTHZ_IMAGE", ""),
                        "read_only": _list(env.get("HELICAL_AUTHZ_READ_ONLY", "")),
                        "read_write": _list(env.get("HELICAL_AUTHZ_READ_WRITE", "")),
                        "networks": _list(env.get("HELICAL_AUTHZ_NETWORKS", "none")),
                    }
                }
            )

    def check(self, method: str, target: str, body: bytes) -> None:
        """Raise :class:`Refused` unless ``method target`` (with ``body``) may pass."""
        path = VERSION_PREFIX.sub("", target.split("?", 1)[0])
        section = SECTIONS.get(path.strip("/").split("/", 1)[0])
        if section is None or not _flag(self.env, section):
            raise Refused(f"{method} {path}: the {section or 'unknown'} API is not allowed here")
        if method in ("POST", "PUT") and not _flag(self.env, "POST"):
            raise Refused(f"{method} {path}: this proxy is read-only")
        if method == "DELETE" and not _flag(self.env, "DELETE"):
            raise Refused(f"DELETE {path}: deleting is not allowed here")
        if method not in ("GET", "HEAD", "POST", "PUT", "DELETE"):
            raise Refused(f"{method} {path}: method not allowed")
        if self.rego_module is not None and not self._rego_allows(method, target, body):
            raise Refused(f"{method} {path}: refused by the runner-only policy{_why(path, body)}")

    def _rego_allows(self, method: str, target: str, body: bytes) -> bool:
        from regopy import Interpreter

        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            return False
        rego = Interpreter()
        rego.add_module("runner_only", self.rego_module)
        rego.add_data_json(self.rego_data)
        rego.set_input_term(json.dumps({"Method": method, "Path": target, "Body": parsed}))
        out = str(rego.query("data.docker.authz.allow"))
        # anything but an explicit true denies, as an engine authorization plugin does
        return out.startswith("{") and json.loads(out).get("expressions") == [True]


def _why(path: str, body: bytes) -> str:
    """A hint for a refused container create: the field a person would look at first."""
    if not path.startswith("/containers/create") or not body:
        return ""
    try:
        spec = json.loads(body)
    except ValueError:
        return " (body is not JSON)"
    host = spec.get("HostConfig") or {}
    if host.get("Privileged"):
        return " (privileged container)"
    if host.get("Binds") or any(m.get("Type") == "bind" for m in host.get("Mounts") or []):
        return f" (image {spec.get('Image')!r}, mounts checked against the allowed folders)"
    return f" (image {spec.get('Image')!r}, user {spec.get('User')!r})"


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("client closed before a full request")
        data += chunk
        if len(data) > MAX_HEAD:
            raise Refused("request head too large")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (dst, src):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Handler(socketserver.BaseRequestHandler):
    server: Server

    def handle(self) -> None:
        client = self.request
        try:
            head, rest = _read_head(client)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = [line.split(":", 1) for line in lines[1:] if ":" in line]
            names = {k.strip().lower(): v.strip() for k, v in headers}
            if "chunked" in names.get("transfer-encoding", "").lower():
                raise Refused(f"{method} {target}: chunked request bodies are not forwarded")
            length = int(names.get("content-length", "0") or 0)
            if length > MAX_BODY:
                raise Refused(f"{method} {target}: body too large")
            body = rest
            while len(body) < length:
                chunk = client.recv(min(65536, length - len(body)))
                if not chunk:
                    raise ConnectionError("client closed mid-body")
                body += chunk
            self.server.policy.check(method, target, body)
        except Refused as exc:
            LOG.warning("refused from %s: %s", self.client_address[0], exc)
            payload = json.dumps({"message": str(exc)}).encode()
            client.sendall(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            return
        except (ConnectionError, ValueError, OSError) as exc:
            LOG.debug("dropped connection: %s", exc)
            return
        upgrade = "upgrade" in names.get("connection", "").lower()
        kept = [
            f"{k}:{v}"
            for k, v in headers
            if upgrade or k.strip().lower() not in ("connection", "keep-alive")
        ]
        if not upgrade:
            kept.append("Connection: close")
        forwarded = "\r\n".join([lines[0], *kept]).encode("latin-1") + b"\r\n\r\n" + body
        LOG.info("%s %s", method, target.split("?", 1)[0])
        engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            engine.connect(self.server.engine_socket)
        except OSError as exc:
            LOG.error("engine socket %s: %s", self.server.engine_socket, exc)
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        engine.sendall(forwarded)
        back = threading.Thread(target=_pipe, args=(engine, client), daemon=True)
        back.start()
        if upgrade:  # a hijacked stream (attach): raw both ways until either side closes
            _pipe(client, engine)
        back.join()
        engine.close()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, policy: Policy, engine_socket: str):
        self.policy = policy
        self.engine_socket = engine_socket
        super().__init__(address, Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default=os.environ.get("LISTEN", ":2375"), help="host:port")
    parser.add_argument("--socket", default=os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    host, _, port = args.listen.rpartition(":")
    try:
        policy = Policy(dict(os.environ))
    except OSError as exc:
        print(f"socket-proxy: cannot read HELICAL_AUTHZ_POLICY: {exc}", file=sys.stderr)
        return 2
    server = Server((host or "0.0.0.0", int(port)), policy, args.socket)
    LOG.info(
        "listening on %s, engine %s, policy %s",
        args.listen,
        args.socket,
        "runner-only" if policy.rego_module else "paths only",
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
