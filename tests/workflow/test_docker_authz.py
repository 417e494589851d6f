"""docker/authz/runner-only.rego admits exactly the containers the DAG starts.

The create request is the real one: RunnerDockerOperator builds it through
docker-py (the operator's own code path) and the test catches it where it
would go to the engine. The policy runs in rego-cpp (regopy), the engine
authorization plugin's input format (Method, Path, Body).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from regopy import Interpreter

from docker import APIClient
from helical_workflow import containers, jobs

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "docker" / "authz" / "runner-only.rego"
DATA = json.loads((REPO / "docker" / "authz" / "data.json").read_text())
ROOT = "/srv/helical"


class Captured(Exception):
    pass


def _create_request(monkeypatch, op) -> dict:
    """The body of POST /containers/create that the operator sends, caught at the socket."""
    client = APIClient(base_url="unix:///nonexistent.sock", version="1.41")
    sent = {}

    def post_json(url, data=None, **kwargs):
        sent["path"] = url.split("nonexistent.sock", 1)[-1] if "sock" in url else url
        sent["body"] = json.loads(json.dumps(data))
        raise Captured

    monkeypatch.setattr(client, "_post_json", post_json)
    monkeypatch.setattr(client, "images", lambda name=None: [{"Id": "x"}])
    op.__dict__["hook"] = type("Hook", (), {"api_client": client, "client_created": True})()
    with pytest.raises(Captured):
        op.execute({})
    return {"Method": "POST", "Path": "/v1.41/containers/create", "Body": sent["body"]}


def allowed(request: dict) -> bool:
    rego = Interpreter()
    rego.add_module("runner_only", POLICY.read_text())
    rego.add_data_json(json.dumps(DATA))
    rego.set_input_term(json.dumps(request))
    out = str(rego.query("data.docker.authz.allow"))
    # anything but an explicit true denies, as the authorization plugin does
    return out.startswith("{") and json.loads(out)["expressions"] == [True]


@pytest.fixture
def embed_request(monkeypatch):
    monkeypatch.setenv("HELICAL_DOCKER_NETWORK", "helical-runner")
    monkeypatch.setenv("HELICAL_RUNNER_MODEL_STORE", f"{ROOT}/models")
    monkeypatch.setattr(containers, "_runner_owned_folder", lambda folder: None)
    shard = {
        "dataset": f"{ROOT}/data/pbmc/pbmc.h5ad",
        "dataset_name": "pbmc",
        "model": "geneformer",
        "shards": [
            {"start": 0, "stop": 10, "output": f"{ROOT}/runs/r1/pbmc/shards/geneformer/0-10.h5ad"}
        ],
        "sha256": None,
        "overrides": {},
        "timeout_minutes": 10,
        "run_root": f"{ROOT}/runs/r1",
    }
    (job,) = jobs.embed_jobs([shard], dag_id="d", task_id="embed_gpu_nvidia_a10g", run_id="r1")
    op = containers.RunnerDockerOperator(task_id="embed_gpu_nvidia_a10g", **job)
    return _create_request(monkeypatch, op)


def test_the_operators_own_request_is_admitted(embed_request):
    assert embed_request["Body"]["Image"] == DATA["helical"]["image"]
    assert allowed(embed_request)


@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(lambda b: b["HostConfig"].update(Privileged=True), id="privileged"),
        pytest.param(lambda b: b.update(Image="debian:bookworm"), id="other-image"),
        pytest.param(lambda b: b.update(User="0:0"), id="root"),
        pytest.param(lambda b: b["HostConfig"].update(Binds=["/:/host"]), id="bind-host-root"),
        pytest.param(
            lambda b: b["HostConfig"]["Mounts"].append(
                {"Type": "bind", "Source": "/etc", "Target": "/etc", "ReadOnly": True}
            ),
            id="mount-outside",
        ),
        pytest.param(
            lambda b: b["HostConfig"]["Mounts"].__setitem__(
                0, {**b["HostConfig"]["Mounts"][0], "ReadOnly": False}
            ),
            id="data-writable",
        ),
        pytest.param(
            lambda b: b["HostConfig"]["Mounts"].append(
                {
                    "Type": "bind",
                    "Source": f"{ROOT}/runs/../../../root",
                    "Target": f"{ROOT}/runs/../../../root",
                    "ReadOnly": False,
                }
            ),
            id="dot-dot-escape",
        ),
        pytest.param(lambda b: b["HostConfig"].update(PidMode="host"), id="host-pid"),
        pytest.param(lambda b: b["HostConfig"].update(NetworkMode="host"), id="host-network"),
        pytest.param(lambda b: b["HostConfig"].update(CapAdd=["SYS_ADMIN"]), id="cap-add"),
        pytest.param(
            lambda b: b["HostConfig"].update(
                Devices=[{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda"}]
            ),
            id="device",
        ),
    ],
)
def test_anything_else_is_refused(embed_request, attack):
    request = copy.deepcopy(embed_request)
    attack(request["Body"])
    assert not allowed(request)


@pytest.mark.parametrize(
    ("method", "path", "ok"),
    [
        ("POST", "/v1.41/containers/abc123/start", True),
        ("POST", "/v1.41/containers/abc123/stop", True),
        ("DELETE", "/v1.41/containers/abc123", True),
        ("GET", "/v1.41/images/json", True),
        ("POST", "/v1.41/containers/abc123/exec", False),
        ("POST", "/v1.41/images/create", False),
        ("POST", "/v1.41/volumes/create", False),
        ("POST", "/v1.41/networks/create", False),
        ("GET", "/v1.41/info", False),
        ("POST", "/v1.41/build", False),
    ],
)
def test_only_the_container_life_cycle_is_reachable(method, path, ok):
    assert allowed({"Method": method, "Path": path, "Body": None}) is ok
