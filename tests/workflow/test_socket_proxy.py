"""docker/socket-proxy: what the compose worker's engine access lets through.

The policy is the repo's Rego file (docker/authz/runner-only.rego) evaluated by
regopy, plus the section/method allow-list; a round trip runs the real proxy
server in front of a stand-in engine on a unix socket and checks that refused
requests never reach it and an allowed one is forwarded whole, one per connection.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import socket
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "socket_proxy", REPO / "docker" / "socket-proxy" / "socket_proxy.py"
)
socket_proxy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(socket_proxy)

IMAGE = "helical-runner:0.1.0-cpu"
LAUNCHER = {
    "CONTAINERS": "1", "IMAGES": "1", "POST": "1", "DELETE": "1", "EXEC": "0",
    "HELICAL_AUTHZ_POLICY": str(REPO / "docker" / "authz" / "runner-only.rego"),
    "HELICAL_AUTHZ_IMAGE": IMAGE,
    "HELICAL_AUTHZ_READ_ONLY": "/srv/data,/srv/models",
    "HELICAL_AUTHZ_READ_WRITE": "/srv/runs",
    "HELICAL_AUTHZ_NETWORKS": "none,helical-runner",
}  # fmt: skip


def runner_create(**host) -> bytes:
    body = {
        "Image": IMAGE,
        "User": "10001:10001",
        "HostConfig": {
            "NetworkMode": "helical-runner",
            "Mounts": [
                {"Type": "bind", "Source": "/srv/data/a", "Target": "/srv/data/a", "ReadOnly": True},
                {"Type": "bind", "Source": "/srv/runs/r1", "Target": "/srv/runs/r1", "ReadOnly": False},
            ],
            **host,
        },
    }  # fmt: skip
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def launcher():
    return socket_proxy.Policy(LAUNCHER)


def test_the_runner_container_and_its_life_cycle_pass(launcher):
    launcher.check("POST", "/v1.41/containers/create", runner_create())
    launcher.check("POST", "/v1.41/containers/abc123/attach?stdout=1&stream=1", b"")
    launcher.check("POST", "/v1.41/containers/abc123/start", b"")
    launcher.check("GET", "/v1.41/containers/json?all=1&filters=%7B%7D", b"")
    launcher.check("DELETE", "/v1.41/containers/abc123?force=1", b"")


@pytest.mark.parametrize(
    "body",
    [
        runner_create(Privileged=True),
        runner_create(Binds=["/:/host"]),
        runner_create(PidMode="host"),
        runner_create(CapAdd=["SYS_ADMIN"]),
        runner_create(Mounts=[{"Type": "bind", "Source": "/etc", "Target": "/etc", "ReadOnly": True}]),
        runner_create(NetworkMode="host"),
        json.dumps({"Image": "debian:bookworm", "User": "10001:10001"}).encode(),
        json.dumps({"Image": IMAGE, "User": "0:0"}).encode(),
        b"not json",
    ],
    ids=["privileged", "binds", "host-pid", "cap-add", "host-folder", "host-network",
         "other-image", "root-user", "garbage"],
)  # fmt: skip
def test_any_other_create_is_refused(launcher, body):
    with pytest.raises(socket_proxy.Refused, match="runner-only policy"):
        launcher.check("POST", "/v1.41/containers/create", body)


@pytest.mark.parametrize(
    ("method", "path", "why"),
    [
        ("POST", "/v1.41/containers/abc/exec", "runner-only policy"),
        ("POST", "/v1.41/exec/abc/start", "EXEC API is not allowed"),
        ("POST", "/v1.41/volumes/create", "VOLUMES API is not allowed"),
        ("POST", "/v1.41/images/create?fromImage=evil", "runner-only policy"),
        ("POST", "/v1.41/build", "BUILD API is not allowed"),
        ("GET", "/v1.41/secrets", "SECRETS API is not allowed"),
        ("GET", "/v1.41/nonsense", "unknown API is not allowed"),
    ],
)
def test_other_apis_are_refused(launcher, method, path, why):
    with pytest.raises(socket_proxy.Refused, match=why):
        launcher.check(method, path, b"")


def test_the_read_only_proxy_only_reads():
    readonly = socket_proxy.Policy({"CONTAINERS": "1", "INFO": "1", "VERSION": "1", "POST": "0"})
    readonly.check("GET", "/v1.41/containers/abc/stats?stream=false", b"")
    readonly.check("GET", "/info", b"")
    with pytest.raises(socket_proxy.Refused, match="read-only"):
        readonly.check("POST", "/v1.41/containers/create", runner_create())
    with pytest.raises(socket_proxy.Refused, match="deleting"):
        readonly.check("DELETE", "/v1.41/containers/abc", b"")


def test_round_trip_through_the_real_server(tmp_path):
    """Refused requests never reach the engine; an allowed one arrives whole, closed after."""
    engine_path = str(tmp_path / "engine.sock")
    seen: list[bytes] = []
    engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    engine.bind(engine_path)
    engine.listen()

    def serve_engine():
        while True:
            try:
                conn, _ = engine.accept()
            except OSError:
                return
            data = conn.recv(65536)
            seen.append(data)
            conn.sendall(b'HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\n{"Id":"c1"}')
            conn.close()

    threading.Thread(target=serve_engine, daemon=True).start()
    server = socket_proxy.Server(("127.0.0.1", 0), socket_proxy.Policy(LAUNCHER), engine_path)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1.41/containers/create", runner_create(Privileged=True),
                      {"Content-Type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
        assert resp.status == 403
        assert "privileged container" in json.loads(resp.read())["message"]
        assert seen == []
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1.41/containers/create", runner_create(),
                     {"Content-Type": "application/json", "Connection": "keep-alive"})  # fmt: skip
        resp = conn.getresponse()
        assert resp.status == 201 and json.loads(resp.read()) == {"Id": "c1"}
        (request,) = seen
        head, _, body = request.partition(b"\r\n\r\n")
        assert json.loads(body)["Image"] == IMAGE
        assert b"Connection: close" in head and b"keep-alive" not in head
    finally:
        server.shutdown()
        engine.close()
