"""Plain manifests in k8s/: valid Kubernetes 1.33, checkov-clean, and saying what they must.

kubernetes-validate checks every object against the 1.33 OpenAPI schema in
strict mode (unknown fields fail); checkov scans the folder; the remaining tests
pin the behaviour the design depends on (autoscaler that spares long jobs, GPU
plugin on tainted nodes, SigV4 remote write to AMP, dashboards in sync).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "k8s"
CHECKOV = ROOT / ".venvs" / "checkov" / "bin" / "checkov"
PROFILES_DIR = ROOT / "runners" / "helical-runner" / "src" / "helical_runner" / "profiles"
DASHBOARDS_SRC = ROOT / "observability" / "grafana" / "dashboards"
PLATFORM_VALUES = ROOT / "charts" / "helical-platform" / "values.yaml"
K8S_VERSION = "1.33.0"  # the EKS version terraform creates (modules/eks); stated in docs/aws.md
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job"}


def manifest_files() -> list[Path]:
    files = sorted(K8S_DIR.rglob("*.yaml"))
    assert files, f"no manifests under {K8S_DIR}"
    return files


@pytest.fixture(scope="session")
def objects() -> list[tuple[Path, dict]]:
    return [
        (path, doc)
        for path in manifest_files()
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def one(objects: list[tuple[Path, dict]], kind: str, name: str) -> dict:
    found = [d for _, d in objects if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def longest_profile_timeout_s() -> int:
    timeouts = [
        int(yaml.safe_load(p.read_text())["timeout_minutes"]) for p in PROFILES_DIR.glob("*.yaml")
    ]
    assert timeouts, f"no profiles in {PROFILES_DIR}"
    return max(timeouts) * 60


@pytest.fixture(scope="session")
def checkov_report() -> dict:
    # no --quiet: it drops passed/skipped checks from the JSON report
    result = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(K8S_DIR),
            "--framework",
            "kubernetes",
            "-o",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


# --- validity -----------------------------------------------------------------------------
def test_every_manifest_is_valid_kubernetes_in_strict_mode(objects) -> None:
    assert len(objects) >= 15
    for path, doc in objects:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}: {exc}")


def test_every_namespaced_object_names_its_namespace(objects) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for path, doc in objects:
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"].get("namespace"), f"{path}: {doc['kind']} lands in 'default'"


def test_checkov_finds_nothing(checkov_report) -> None:
    failed = [
        (c["check_id"], c["resource"], c["file_path"])
        for c in checkov_report["results"]["failed_checks"]
    ]
    assert failed == []
    assert checkov_report["summary"]["passed"] > 200
    assert checkov_report["summary"]["parsing_errors"] == 0


def test_every_checkov_skip_carries_a_reason_and_a_comment(objects) -> None:
    skip = re.compile(r"^CKV2?_K8S_\d+=\S.{10,}$")  # "<check>=<reason of a few words>"
    for path, doc in objects:
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                assert skip.match(value), f"{path}: skip without a reason: {value}"
    for path in manifest_files():
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "checkov.io/skip" in line:
                block = lines[max(0, i - 6) : i]
                assert any("Skip justified" in b for b in block), f"{path}:{i + 1}: no comment"


def test_every_workload_sets_resources_and_drops_privileges(objects) -> None:
    for path, doc in objects:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        pod = doc["spec"]["template"]["spec"]
        for c in pod["containers"]:
            where = f"{path.name}:{c['name']}"
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], where
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert not sc.get("privileged"), where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", path


# --- cluster autoscaler ----------------------------------------------------------------------
def autoscaler_args(objects) -> dict[str, str]:
    deploy = one(objects, "Deployment", "cluster-autoscaler")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    args = {}
    for arg in container["command"][1:]:
        key, _, value = arg.partition("=")
        args[key] = value
    return args


def test_autoscaler_balances_groups_and_scales_down_nodes_with_scratch_space(objects) -> None:
    args = autoscaler_args(objects)
    assert args["--balance-similar-node-groups"] == "true"
    assert args["--skip-nodes-with-local-storage"] == "false"
    assert args["--cloud-provider"] == "aws"
    assert "asg:tag=k8s.io/cluster-autoscaler/enabled" in args["--node-group-auto-discovery"]


def test_autoscaler_gives_drained_pods_the_longest_runner_timeout(objects) -> None:
    args = autoscaler_args(objects)
    assert int(args["--max-graceful-termination-sec"]) >= longest_profile_timeout_s()
    assert re.fullmatch(r"\d+m", args["--scale-down-unneeded-time"])


def test_autoscaler_uses_irsa_and_cannot_evict_itself(objects) -> None:
    sa = one(objects, "ServiceAccount", "cluster-autoscaler")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    deploy = one(objects, "Deployment", "cluster-autoscaler")
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "cluster-autoscaler"


def test_autoscaler_rbac_has_no_wildcards_or_secret_access(objects) -> None:
    for kind in ("ClusterRole", "Role"):
        role = one(objects, kind, "cluster-autoscaler")
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert "secrets" not in rule["resources"], rule


# --- GPU device plugin -------------------------------------------------------------------------
def test_device_plugin_runs_on_tainted_gpu_nodes_only(objects) -> None:
    ds = one(objects, "DaemonSet", "nvidia-device-plugin")
    pod = ds["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"] == {"helical.ai/pool": "gpu"}
    assert pod["priorityClassName"] == "system-node-critical"
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts == {"/var/lib/kubelet/device-plugins"}


# --- metrics to AMP ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def agent_config(objects) -> dict:
    cm = one(objects, "ConfigMap", "prometheus-agent-config")
    return yaml.safe_load(cm["data"]["prometheus.yml"])


def test_agent_remote_writes_to_amp_with_sigv4(agent_config) -> None:
    (remote,) = agent_config["remote_write"]
    assert re.fullmatch(
        r"https://aps-workspaces\.[a-z0-9-]+\.amazonaws\.com/workspaces/ws-[0-9a-f-]+/api/v1/remote_write",
        remote["url"],
    )
    assert remote["sigv4"]["region"]
    assert "basic_auth" not in remote and "authorization" not in remote  # IRSA, no keys


def test_agent_runs_in_agent_mode_under_an_irsa_role(objects) -> None:
    deploy = one(objects, "Deployment", "prometheus-agent")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert "--agent" in container["args"]
    sa = one(objects, "ServiceAccount", deploy["spec"]["template"]["spec"]["serviceAccountName"])
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


def test_agent_scrapes_airflow_statsd_runner_pushgateway_and_container_metrics(
    agent_config, objects
) -> None:
    jobs = {j["job_name"]: j for j in agent_config["scrape_configs"]}
    assert jobs["airflow-statsd"]["static_configs"][0]["targets"] == [
        "airflow-statsd.airflow.svc:9102"
    ]
    assert jobs["pushgateway"]["honor_labels"] is True
    assert jobs["kubelet-cadvisor"]["metrics_path"] == "/metrics/cadvisor"
    assert jobs["kubelet-cadvisor"]["tls_config"]["insecure_skip_verify"] is False
    # The Pushgateway port the runner namespace may reach is the one it listens on.
    platform = yaml.safe_load(PLATFORM_VALUES.read_text())["networkPolicy"]["pushgateway"]
    service = one(objects, "Service", "pushgateway")
    assert service["metadata"]["namespace"] == platform["namespace"]
    assert service["spec"]["ports"][0]["port"] == platform["port"]
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == [
        f"pushgateway.{platform['namespace']}.svc:{platform['port']}"
    ]


def test_pushgateway_accepts_only_runner_pods_and_the_agent(objects) -> None:
    policy = one(objects, "NetworkPolicy", "pushgateway")
    (rule,) = policy["spec"]["ingress"]
    peers = [json.dumps(p, sort_keys=True) for p in rule["from"]]
    assert len(peers) == 2
    assert any("helical" in p for p in peers) and any("prometheus-agent" in p for p in peers)
    assert "Egress" in policy["spec"]["policyTypes"] and not policy["spec"].get("egress")


# --- dashboards --------------------------------------------------------------------------------
def load_generator():
    sys.path.insert(0, str(K8S_DIR / "dashboards"))
    try:
        import generate
    finally:
        sys.path.remove(str(K8S_DIR / "dashboards"))
    return generate


def test_dashboard_configmaps_are_in_sync_with_observability() -> None:
    if not DASHBOARDS_SRC.exists():
        pytest.skip(f"{DASHBOARDS_SRC} does not exist yet")
    gen = load_generator()
    assert gen.stale_files() == [], "run: python k8s/dashboards/generate.py"
    for src in DASHBOARDS_SRC.glob("*.json"):
        cm = yaml.safe_load((gen.OUTPUT_DIR / f"{gen.configmap_name(src.stem)}.yaml").read_text())
        assert cm["data"][src.name] == src.read_text()  # byte for byte, importable as is
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_dashboard_generator_flags_changes_orphans_and_bad_json(tmp_path: Path) -> None:
    gen = load_generator()
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "Runner Perf.json").write_text(json.dumps({"title": "Runner", "panels": []}))
    gen.write(out, src)
    assert [p.name for p in out.iterdir()] == ["grafana-dashboard-runner-perf.yaml"]
    assert gen.stale_files(out, src) == []
    (src / "Runner Perf.json").write_text(json.dumps({"title": "Runner v2", "panels": []}))
    (out / "grafana-dashboard-gone.yaml").write_text("orphan")
    assert gen.stale_files(out, src) == [
        "grafana-dashboard-gone.yaml",
        "grafana-dashboard-runner-perf.yaml",
    ]
    (src / "broken.json").write_text("{not json")
    with pytest.raises(gen.DashboardError, match=r"broken\.json"):
        gen.write(out, src)


# --- container logs to CloudWatch -----------------------------------------------------------
TF_LOG_GROUPS = ROOT / "terraform" / "modules" / "observability" / "variables.tf"
AIRFLOW_COMPONENTS = {"api-server", "scheduler", "dag-processor", "triggerer", "worker"}


def fluent_bit_sections(objects) -> list[tuple[str, dict[str, str]]]:
    conf = one(objects, "ConfigMap", "fluent-bit-config")["data"]["fluent-bit.conf"]
    sections: list[tuple[str, dict[str, str]]] = []
    for line in conf.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            sections.append((line[1:-1], {}))
        elif line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            sections[-1][1][key] = value.strip()
    return sections


def test_fluent_bit_tails_the_airflow_and_runner_namespaces(objects) -> None:
    platform = yaml.safe_load(PLATFORM_VALUES.read_text())
    inputs = {s["Tag"]: s["Path"] for name, s in fluent_bit_sections(objects) if name == "INPUT"}
    assert inputs == {
        "kube.airflow.*": f"/var/log/containers/*_{platform['airflow']['namespace']}_*.log",
        "kube.runner.*": f"/var/log/containers/*_{platform['runner']['namespace']}_*.log",
    }
    # every tag that is read is also enriched and shipped
    sections = fluent_bit_sections(objects)
    for tag in inputs:
        assert any(n == "FILTER" and s["Match"] == tag for n, s in sections), tag
        assert any(n == "OUTPUT" and s["Match"] == tag for n, s in sections), tag


def test_fluent_bit_writes_only_into_log_groups_terraform_creates(objects) -> None:
    if not TF_LOG_GROUPS.exists():
        pytest.skip(f"{TF_LOG_GROUPS} not written yet")
    block = TF_LOG_GROUPS.read_text().split('variable "log_groups"', 1)[1].split("}", 1)[0]
    created = set(re.findall(r'"([a-z/-]+)"', block.split("default", 1)[1]))
    outputs = [s for n, s in fluent_bit_sections(objects) if n == "OUTPUT"]
    groups = set()
    for out in outputs:
        assert out["auto_create_group"] == "false"  # groups are KMS-encrypted by terraform
        template = out.get("log_group_template", out["log_group_name"])
        if "$kubernetes['labels']['component']" in template:
            groups |= {template.split("$")[0] + c for c in AIRFLOW_COMPONENTS}
        else:
            groups.add(template)
    prefix = "/helical/helical-prod/"
    assert all(g.startswith(prefix) for g in groups), groups
    assert {g.removeprefix(prefix) for g in groups} <= created
