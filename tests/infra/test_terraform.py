"""The Terraform of the AWS platform, checked with the real tools offline.

1. ``terraform fmt``, ``init -backend=false`` and ``validate`` for every module and env.
2. ``terraform test`` (mocked AWS provider) asserting the security properties,
   plus mutation runs: one security setting flipped, the suite must fail.
3. plan + apply + destroy of the network, storage and security modules against
   moto's server on loopback, checked afterwards through boto3.
4. checkov over ``terraform/``: zero failed checks, every skip justified.

Terraform runs through ``scripts/terraform.sh``, which points it at the
offline AWS provider mirror. Everything runs in a copy of the tree under a
temporary directory so the working tree gets no ``.terraform/`` or state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TF_SRC = ROOT / "terraform"
MOTO_SRC = ROOT / "tests" / "infra" / "moto"
TF_SH = ROOT / "scripts" / "terraform.sh"
CHECKOV = ROOT / ".venvs" / "checkov" / "bin" / "checkov"
MOTO_SERVER = Path(sys.executable).parent / "moto_server"

MODULES = sorted(p.parent.name for p in (TF_SRC / "modules").glob("*/main.tf"))
ENVS = sorted(p.parent.name for p in (TF_SRC / "envs").glob("*/main.tf"))
ROOTS = [f"modules/{m}" for m in MODULES] + [f"envs/{e}" for e in ENVS]
TESTED_ROOTS = [r for r in ROOTS if list((TF_SRC / r / "tests").glob("*.tftest.hcl"))]


def _tf(
    args: list[str], cwd: Path, *, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """Run terraform (through the mirror-aware wrapper), never raising."""
    return subprocess.run(
        # Flags must precede positional arguments (a plan file, a path).
        [str(TF_SH), args[0], "-no-color", *args[1:]],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ok(proc: subprocess.CompletedProcess[str], what: str) -> str:
    assert proc.returncode == 0, (
        f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


def _copy_tree(dest: Path) -> Path:
    """terraform/ and the moto root, laid out as in the repo, without local state."""
    ignore = shutil.ignore_patterns(".terraform", "*.tfstate*", "*.tfplan")
    shutil.copytree(TF_SRC, dest / "terraform", ignore=ignore)
    shutil.copytree(MOTO_SRC, dest / "tests" / "infra" / "moto", ignore=ignore)
    return dest


@pytest.fixture(scope="session")
def mirror_config() -> Path:
    """The CLI config scripts/terraform.sh writes; fails clearly without terraform or the mirror."""
    if shutil.which("terraform") is None:
        pytest.fail("terraform is not on PATH: install Terraform >= 1.11 (see terraform/README.md)")
    proc = subprocess.run([str(TF_SH), "config"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"no offline AWS provider mirror: {proc.stderr.strip()}"
    return Path(proc.stdout.strip())


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory, mirror_config: Path) -> Path:
    return _copy_tree(tmp_path_factory.mktemp("tf"))


_initialized: set[Path] = set()


def _init(root: Path) -> None:
    if root not in _initialized:
        _ok(_tf(["init", "-backend=false", "-input=false"], root), f"terraform init in {root}")
        _initialized.add(root)


# --- 1. format and validate ---------------------------------------------------


def test_terraform_files_are_formatted(mirror_config: Path) -> None:
    for path in (TF_SRC, MOTO_SRC):
        proc = _tf(["fmt", "-check", "-recursive", "-diff", str(path)], ROOT)
        assert proc.returncode == 0, (
            f"run `scripts/terraform.sh fmt -recursive {path.relative_to(ROOT)}`:\n{proc.stdout}"
        )


@pytest.mark.parametrize("root", ROOTS)
def test_root_initializes_offline_and_validates(tree: Path, root: str) -> None:
    cwd = tree / "terraform" / root
    _init(cwd)
    result = json.loads(_tf(["validate", "-json"], cwd).stdout)
    problems = [
        f"{d['severity']}: {d['summary']}: {d.get('detail', '')}" for d in result["diagnostics"]
    ]
    assert result["valid"] and not problems, "\n".join(problems)


def test_every_module_has_docs_and_a_secure_interface() -> None:
    """Each module: the standard files, and every variable with a description and type."""
    for module in MODULES:
        folder = TF_SRC / "modules" / module
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
            assert (folder / name).is_file(), f"modules/{module} lacks {name}"
        text = (folder / "variables.tf").read_text()
        for block in re.split(r'(?m)^variable "', text)[1:]:
            var = block.split('"', 1)[0]
            assert "description =" in block, f"modules/{module}: variable {var} has no description"
            assert re.search(r"(?m)^\s+type\s+=", block), (
                f"modules/{module}: variable {var} has no type"
            )
        assert 'required_version = ">= 1.11"' in (folder / "versions.tf").read_text()


# --- 2. terraform test with a mocked provider --------------------------------


@pytest.mark.parametrize("root", TESTED_ROOTS)
def test_mocked_security_assertions_pass(tree: Path, root: str) -> None:
    cwd = tree / "terraform" / root
    _init(cwd)
    out = _ok(_tf(["test"], cwd), f"terraform test in {root}")
    summary = re.search(r"Success! (\d+) passed, 0 failed", out)
    assert summary and int(summary.group(1)) > 0, out


# Broken controls, grouped by module: (file, text that is there, what a
# careless change would make it, message the module's suite must print).
# All mutations of a module go into one run: assertion failures do not stop
# the other assertions, and one run per module keeps the suite fast.
MUTATIONS = {
    "storage": [
        (
            "main.tf",
            'versioning_configuration {\n    status = "Enabled"',
            'versioning_configuration {\n    status = "Suspended"',
            "every bucket must be versioned",
        ),
        (
            "main.tf",
            "block_public_policy     = true",
            "block_public_policy     = false",
            "every bucket must block all public access",
        ),
        (
            "main.tf",
            'each.key == "access-logs" ? "AES256" : "aws:kms"',
            '"AES256"',
            "every data bucket must use SSE-KMS",
        ),
        (
            "policies.tf",
            '"aws:SecureTransport" = "false"',
            '"aws:SecureTransport" = "true"',
            "every bucket policy must deny requests without TLS",
        ),
    ],
    "security": [
        (
            "main.tf",
            "enable_key_rotation     = true",
            "enable_key_rotation     = false",
            "every KMS key must rotate automatically",
        ),
        (
            "irsa.tf",
            ':${each.value.service_account.name}"',
            ':*"',
            "each IRSA role must trust exactly its own service account",
        ),
        (
            "irsa.tf",
            "[local.buckets.datasets, local.buckets.models, local.buckets.outputs]",
            "[local.buckets.datasets, local.buckets.models, local.buckets.outputs, local.buckets.logs]",
            "the runner role may touch only",
        ),
    ],
    "database": [
        (
            "main.tf",
            "publicly_accessible    = false",
            "publicly_accessible    = true",
            "RDS must not be publicly accessible",
        ),
        (
            "main.tf",
            "multi_az               = var.multi_az",
            "multi_az               = false",
            "RDS must be Multi-AZ",
        ),
        (
            "main.tf",
            "storage_encrypted     = true",
            "storage_encrypted     = false",
            "RDS storage must be encrypted",
        ),
    ],
    "cache": [
        (
            "main.tf",
            "transit_encryption_enabled = true",
            "transit_encryption_enabled = false",
            "Redis must require TLS",
        ),
        (
            "main.tf",
            "at_rest_encryption_enabled = true",
            "at_rest_encryption_enabled = false",
            "Redis must be encrypted at rest",
        ),
    ],
    "network": [
        (
            "endpoints.tf",
            "cidr_ipv4         = aws_vpc.this.cidr_block",
            'cidr_ipv4         = "0.0.0.0/0"',
            "only the load balancer may accept 0.0.0.0/0",
        ),
        (
            "load_balancer.tf",
            "from_port         = 443",
            "from_port         = 22",
            "only the load balancer may accept 0.0.0.0/0",
        ),
    ],
    "eks": [
        (
            "main.tf",
            "endpoint_public_access  = var.endpoint_public_access",
            "endpoint_public_access  = true",
            "the API endpoint must be private",
        ),
    ],
}


@pytest.mark.parametrize("module", sorted(MUTATIONS))
def test_mocked_suite_fails_when_a_control_is_broken(
    tmp_path: Path, mirror_config: Path, module: str
) -> None:
    """Proof the assertions can fail: break controls, the module's suite must name each one."""
    tree = _copy_tree(tmp_path)
    folder = tree / "terraform" / "modules" / module
    for name, present, broken, _ in MUTATIONS[module]:
        source = folder / name
        text = source.read_text()
        assert text.count(present) == 1, (
            f"mutation {present!r} no longer matches {module}/{name}: update MUTATIONS"
        )
        source.write_text(text.replace(present, broken))

    _ok(_tf(["init", "-backend=false", "-input=false"], folder), f"init {folder}")
    proc = _tf(["test"], folder)
    output = re.sub(r"\s+", " ", proc.stdout + proc.stderr)
    assert proc.returncode != 0, (
        f"{module}: the suite still passes with controls broken:\n{proc.stdout}"
    )
    missed = [message for *_, message in MUTATIONS[module] if message not in output]
    assert not missed, f"{module}: no assertion caught {missed}:\n{proc.stdout[-3000:]}"


# --- 3. apply and destroy against moto ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert MOTO_SERVER.exists(), f"{MOTO_SERVER} missing: run scripts/bootstrap.sh tools"
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert proc.poll() is None, f"moto_server exited early (see {log.name})"
            assert time.monotonic() < deadline, "moto_server did not listen within 30 s"
            time.sleep(0.2)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def _aws(service: str, endpoint: str):  # boto3 client types are generated at run time
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="moto-fake-access-key",
        aws_secret_access_key="moto-fake-secret-key",
    )


class MotoStack:
    """The moto root config applied once; destroyed by the last test (or at teardown)."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        self.outputs: dict[str, object] = {}
        self.destroyed = False

    def apply(self) -> None:
        _ok(
            _tf(["plan", "-input=false", "-out=moto.tfplan"], self.cwd, env=self.env),
            "plan against moto",
        )
        _ok(
            _tf(["apply", "-input=false", "moto.tfplan"], self.cwd, env=self.env, timeout=420),
            "apply against moto",
        )
        raw = json.loads(_ok(_tf(["output", "-json"], self.cwd, env=self.env), "terraform output"))
        self.outputs = {k: v["value"] for k, v in raw.items()}

    def destroy(self) -> subprocess.CompletedProcess[str]:
        self.destroyed = True
        return _tf(
            ["destroy", "-auto-approve", "-input=false"], self.cwd, env=self.env, timeout=300
        )


@pytest.fixture(scope="module")
def moto_stack(tree: Path, moto_endpoint: str) -> Iterator[MotoStack]:
    cwd = tree / "tests" / "infra" / "moto"
    env = {
        "TF_VAR_endpoint": moto_endpoint,
        "TF_VAR_bucket_prefix": f"helical-{uuid.uuid4().hex[:8]}",
    }
    _init(cwd)
    stack = MotoStack(cwd, env)
    try:
        stack.apply()
        yield stack
    finally:
        if not stack.destroyed:
            stack.destroy()


def test_moto_buckets_are_versioned_encrypted_private_and_tls_only(
    moto_stack: MotoStack, moto_endpoint: str
) -> None:
    s3 = _aws("s3", moto_endpoint)
    names: dict[str, str] = moto_stack.outputs["bucket_names"]  # type: ignore[assignment]
    assert set(names) == {"datasets", "outputs", "models", "logs", "audit", "access-logs"}
    s3_key = moto_stack.outputs["kms_key_arns"]["s3"]  # type: ignore[index]
    for role, bucket in names.items():
        assert s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled", bucket
        rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"][
            "Rules"
        ][0]
        default = rule["ApplyServerSideEncryptionByDefault"]
        if role == "access-logs":
            assert default["SSEAlgorithm"] == "AES256"
        else:
            assert (default["SSEAlgorithm"], default["KMSMasterKeyID"]) == ("aws:kms", s3_key), (
                bucket
            )
            assert rule["BucketKeyEnabled"] is True, bucket
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert all(block.values()) and len(block) == 4, f"{bucket}: {block}"
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        assert any(
            s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            for s in policy["Statement"]
        ), bucket
        if role != "access-logs":
            logging = s3.get_bucket_logging(Bucket=bucket)["LoggingEnabled"]
            assert logging["TargetBucket"] == names["access-logs"], bucket


def test_moto_logs_lifecycle_archives_after_60_and_90_days(
    moto_stack: MotoStack, moto_endpoint: str
) -> None:
    s3 = _aws("s3", moto_endpoint)
    bucket = moto_stack.outputs["bucket_names"]["logs"]  # type: ignore[index]
    rule = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"][0]
    assert [(t["Days"], t["StorageClass"]) for t in rule["Transitions"]] == [
        (60, "GLACIER"),
        (90, "DEEP_ARCHIVE"),
    ]


def test_moto_kms_keys_rotate(moto_stack: MotoStack, moto_endpoint: str) -> None:
    kms = _aws("kms", moto_endpoint)
    keys: dict[str, str] = moto_stack.outputs["kms_key_arns"]  # type: ignore[assignment]
    assert len(keys) == 8
    for domain, arn in keys.items():
        assert kms.get_key_rotation_status(KeyId=arn)["KeyRotationEnabled"], domain


def test_moto_irsa_roles_trust_one_service_account_and_own_buckets(
    moto_stack: MotoStack, moto_endpoint: str
) -> None:
    iam = _aws("iam", moto_endpoint)
    buckets: dict[str, str] = moto_stack.outputs["bucket_names"]  # type: ignore[assignment]
    airflow_roles: dict[str, str] = moto_stack.outputs["airflow_role_arns"]  # type: ignore[assignment]
    assert set(airflow_roles) == {"api-server", "scheduler", "dag-processor", "triggerer", "worker"}
    expected = {
        arn: (f"system:serviceaccount:airflow:airflow-{component}", {"logs"})
        for component, arn in airflow_roles.items()
    }
    expected[str(moto_stack.outputs["runner_role_arn"])] = (
        "system:serviceaccount:helical:helical-runner",
        {"datasets", "models", "outputs"},
    )
    for role_arn, (subject, own) in expected.items():
        role_name = role_arn.rsplit("/", 1)[1]
        trust = iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"]
        if isinstance(trust, str):
            trust = json.loads(trust)
        (statement,) = trust["Statement"]
        conditions = statement["Condition"]["StringEquals"]
        assert conditions == {
            "oidc.eks.us-east-1.amazonaws.com/id/MOTOTEST:sub": subject,
            "oidc.eks.us-east-1.amazonaws.com/id/MOTOTEST:aud": "sts.amazonaws.com",
        }
        (policy_name,) = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
        doc = iam.get_role_policy(RoleName=role_name, PolicyName=policy_name)["PolicyDocument"]
        if isinstance(doc, str):
            doc = json.loads(doc)
        named = {
            r
            for s in doc["Statement"]
            for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])
        }
        s3_buckets = {
            r.split(":::", 1)[1].split("/", 1)[0] for r in named if r.startswith("arn:aws:s3:::")
        }
        assert s3_buckets == {buckets[b] for b in own}, role_name


def test_moto_network_is_three_tier_with_closed_default_group(
    moto_stack: MotoStack, moto_endpoint: str
) -> None:
    ec2 = _aws("ec2", moto_endpoint)
    vpc_id = moto_stack.outputs["vpc_id"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    tiers: dict[str, set[str]] = {}
    for subnet in subnets:
        tags = {t["Key"]: t["Value"] for t in subnet.get("Tags", [])}
        tiers.setdefault(tags["Tier"], set()).add(subnet["AvailabilityZone"])
        assert not subnet["MapPublicIpOnLaunch"], subnet["SubnetId"]
    assert tiers == {
        t: {"us-east-1a", "us-east-1b", "us-east-1c"} for t in ("public", "private", "data")
    }

    groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])[
        "SecurityGroups"
    ]
    default = next(g for g in groups if g["GroupName"] == "default")
    assert default["IpPermissions"] == [] and default["IpPermissionsEgress"] == []
    for group in groups:
        for perm in group["IpPermissions"]:
            if any(r["CidrIp"] == "0.0.0.0/0" for r in perm.get("IpRanges", [])):
                assert (
                    group["GroupName"] == "helical-moto-public-lb"
                    and perm["FromPort"] == perm["ToPort"] == 443
                )

    flow_logs = ec2.describe_flow_logs(Filters=[{"Name": "resource-id", "Values": [vpc_id]}])[
        "FlowLogs"
    ]
    assert [f["TrafficType"] for f in flow_logs] == ["ALL"]
    endpoints = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])[
        "VpcEndpoints"
    ]
    assert {e["ServiceName"].rsplit(".", 1)[-1] for e in endpoints} >= {
        "s3",
        "sts",
        "kms",
        "secretsmanager",
        "logs",
        "api",
        "dkr",
    }


def test_moto_cloudtrail_is_multi_region_with_validation(
    moto_stack: MotoStack, moto_endpoint: str
) -> None:
    trail = _aws("cloudtrail", moto_endpoint).get_trail(Name=moto_stack.outputs["cloudtrail_arn"])[
        "Trail"
    ]
    assert (
        trail["IsMultiRegionTrail"]
        and trail["LogFileValidationEnabled"]
        and trail["IncludeGlobalServiceEvents"]
    )
    assert trail["S3BucketName"] == moto_stack.outputs["bucket_names"]["audit"]  # type: ignore[index]
    assert trail["KmsKeyId"] == moto_stack.outputs["kms_key_arns"]["cloudtrail"]  # type: ignore[index]


def test_moto_destroy_removes_everything(moto_stack: MotoStack, moto_endpoint: str) -> None:
    """Runs last in this module: the stack tears down cleanly and leaves nothing behind."""
    _ok(moto_stack.destroy(), "destroy against moto")
    s3 = _aws("s3", moto_endpoint)
    left = {b["Name"] for b in s3.list_buckets()["Buckets"]} & set(
        moto_stack.outputs["bucket_names"].values()
    )  # type: ignore[union-attr]
    assert not left, f"buckets left after destroy: {left}"
    vpcs = _aws("ec2", moto_endpoint).describe_vpcs(VpcIds=[]).get("Vpcs", [])
    assert moto_stack.outputs["vpc_id"] not in {v["VpcId"] for v in vpcs}
    iam_roles = {r["RoleName"] for r in _aws("iam", moto_endpoint).list_roles()["Roles"]}
    assert not {n for n in iam_roles if n.startswith("helical-moto-")}, iam_roles


# --- 3b. the whole envs, planned by the real provider against moto --------

PROD_OVERRIDE = """
# Written by tests/infra/test_terraform.py into a temporary copy only.
terraform {
  backend "local" {}
}

provider "aws" {
  region                      = "us-east-1"
  access_key                  = "moto-fake-access-key"
  secret_key                  = "moto-fake-secret-key"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true

  endpoints {
    ec2            = "ENDPOINT"
    iam            = "ENDPOINT"
    kms            = "ENDPOINT"
    s3             = "ENDPOINT"
    secretsmanager = "ENDPOINT"
    sts            = "ENDPOINT"
  }
}
"""


def _planned_resources(module: dict) -> Iterator[dict]:
    yield from module.get("resources", [])
    for child in module.get("child_modules", []):
        yield from _planned_resources(child)


@pytest.fixture(scope="module")
def env_plan(
    tmp_path_factory: pytest.TempPathFactory, mirror_config: Path, moto_endpoint: str
) -> Callable[[str], list[dict]]:
    """Every resource of envs/<env> as the real provider plans it (data sources read from moto)."""
    plans: dict[str, list[dict]] = {}

    def planned(env: str) -> list[dict]:
        if env not in plans:
            env_dir = _copy_tree(tmp_path_factory.mktemp(env)) / "terraform" / "envs" / env
            (env_dir / "test_override.tf").write_text(
                PROD_OVERRIDE.replace("ENDPOINT", moto_endpoint)
            )
            _ok(_tf(["init", "-input=false"], env_dir), f"init envs/{env} (local backend)")
            variables = ["-var", f"bucket_prefix=acme-helical-{env}"]
            _ok(
                _tf(["plan", "-input=false", f"-out={env}.tfplan", *variables], env_dir),
                f"plan envs/{env}",
            )
            plan = json.loads(_ok(_tf(["show", "-json", f"{env}.tfplan"], env_dir), "show plan"))
            plans[env] = list(_planned_resources(plan["planned_values"]["root_module"]))
        return plans[env]

    return planned


@pytest.fixture(scope="module")
def prod_plan(env_plan: Callable[[str], list[dict]]) -> list[dict]:
    return env_plan("prod")


# vCPUs, memory GiB, GPUs and the GPU model (the helical.ai/gpu-type label) of
# the instance types our node groups use (AWS instance type pages). A new type
# in a node group must be added here, so the fit check below cannot be skipped.
GPU_INSTANCES = {
    "g5.xlarge": (4, 16, 1, "nvidia-a10g", 24),
    "g5.2xlarge": (8, 32, 1, "nvidia-a10g", 24),
    "g5.4xlarge": (16, 64, 1, "nvidia-a10g", 24),
    "g6e.xlarge": (4, 32, 1, "nvidia-l40s", 48),
    "g6e.2xlarge": (8, 64, 1, "nvidia-l40s", 48),
    "g6e.4xlarge": (16, 128, 1, "nvidia-l40s", 48),
}
PROFILES = ROOT / "runners" / "helical-runner" / "src" / "helical_runner" / "profiles"


def _gib(quantity: str) -> float:
    units = {"Gi": 1.0, "Mi": 1 / 1024, "G": 1e9 / 2**30, "M": 1e6 / 2**30}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    return float(quantity) / 2**30


@pytest.mark.parametrize("env", ENVS)
def test_every_profile_gpu_lands_on_a_node_group_that_fits_it(
    env_plan: Callable[[str], list[dict]], env: str
) -> None:
    """A runner pod selects nodes by helical.ai/gpu-type: without a group that carries
    the label and fits its requests, it would stay Pending and its pool would sit idle."""
    groups = [r["values"] for r in env_plan(env) if r["type"] == "aws_eks_node_group"]
    profiles = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(PROFILES.glob("*.yaml"))}
    assert {"geneformer", "scgpt", "uce"} <= profiles.keys()
    for model, profile in profiles.items():
        res = profile["resources"]
        gpu = res.get("gpu")
        if not gpu:
            continue
        label = gpu["type"]
        fitting = [g for g in groups if (g.get("labels") or {}).get("helical.ai/gpu-type") == label]
        assert fitting, f"{env}: {model} asks for {label} but no node group carries that label"
        for group in fitting:
            name = group["node_group_name"]
            assert "NVIDIA" in group["ami_type"], f"{env}/{name}: not a GPU AMI"
            assert {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"} in [
                {k: t[k] for k in ("key", "value", "effect")} for t in group["taint"]
            ], f"{env}/{name}: GPU nodes must be tainted"
            assert group["scaling_config"][0]["max_size"] >= 1, f"{env}/{name} cannot scale up"
            for itype in group["instance_types"]:
                assert itype in GPU_INSTANCES, f"add {itype} to GPU_INSTANCES"
                vcpu, mem, gpus, model_label, gpu_gib = GPU_INSTANCES[itype]
                assert model_label == label, f"{env}/{name}: {itype} is {model_label}, not {label}"
                assert gpus >= gpu["count"] and gpu_gib >= gpu["min_memory_gib"], (
                    f"{env}/{name}: {itype} lacks GPUs for {model}"
                )
                # kubelet/system reservations and daemonsets take ~0.5 vCPU and ~10% + 1 GiB
                assert float(res["cpu"]) <= vcpu - 0.5, f"{env}/{name}: {itype} CPU < {model}"
                assert _gib(res["memory"]) <= 0.9 * mem - 1, f"{env}/{name}: {itype} RAM < {model}"


def test_prod_plan_opens_only_the_load_balancer_to_the_internet(prod_plan: list[dict]) -> None:
    rules = [r for r in prod_plan if r["type"] == "aws_vpc_security_group_ingress_rule"]
    assert len(rules) >= 5, [r["address"] for r in rules]
    open_to_all = [r for r in rules if r["values"].get("cidr_ipv4") == "0.0.0.0/0"]
    assert [
        (r["address"], r["values"]["from_port"], r["values"]["to_port"]) for r in open_to_all
    ] == [
        (
            'module.platform.module.network.aws_vpc_security_group_ingress_rule.public_lb_https["0.0.0.0/0"]',
            443,
            443,
        )
    ]
    assert not [r for r in prod_plan if r["type"] == "aws_security_group_rule"], (
        "use the per-rule resources"
    )


def test_prod_plan_encrypts_every_store(prod_plan: list[dict]) -> None:
    by_type: dict[str, list[dict]] = {}
    for resource in prod_plan:
        if resource["mode"] == "managed":
            by_type.setdefault(resource["type"], []).append(resource.get("values", {}))
    assert len(by_type["aws_kms_key"]) == 8 and all(
        k["enable_key_rotation"] for k in by_type["aws_kms_key"]
    )
    buckets = len(by_type["aws_s3_bucket"])
    for companion in (
        "aws_s3_bucket_versioning",
        "aws_s3_bucket_public_access_block",
        "aws_s3_bucket_policy",
        "aws_s3_bucket_server_side_encryption_configuration",
    ):
        assert len(by_type[companion]) == buckets, companion
    (db,) = by_type["aws_db_instance"]
    assert (
        db["multi_az"]
        and db["storage_encrypted"]
        and not db["publicly_accessible"]
        and db["deletion_protection"]
    )
    (redis,) = by_type["aws_elasticache_replication_group"]
    assert (
        redis["transit_encryption_enabled"]
        and redis["at_rest_encryption_enabled"]
        and redis["multi_az_enabled"]
    )
    assert all(g["retention_in_days"] <= 180 for g in by_type["aws_cloudwatch_log_group"])
    (efs,) = by_type["aws_efs_file_system"]
    assert efs["encrypted"]
    (cluster,) = by_type["aws_eks_cluster"]
    assert cluster["vpc_config"][0]["endpoint_public_access"] is False


# --- 4. checkov ---------------------------------------------------------------

SKIP = re.compile(r"#\s*checkov:skip=(?P<id>[A-Z0-9_]+)(?::(?P<reason>.*))?")


def test_checkov_finds_no_failed_check() -> None:
    assert CHECKOV.exists(), f"{CHECKOV} missing: run scripts/bootstrap.sh checkov"
    proc = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(TF_SRC),
            "--framework",
            "terraform",
            "--quiet",
            "--compact",
            "--output",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    summary = {k: sum(r["summary"][k] for r in reports) for k in ("passed", "failed", "skipped")}
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]}): {c['check_name']}"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    assert not failed, "checkov failures:\n" + "\n".join(failed)
    assert summary["passed"] > 100, f"checkov checked suspiciously little: {summary}"


def test_every_checkov_skip_is_justified() -> None:
    skips = []
    for path in TF_SRC.rglob("*.tf"):
        if ".terraform" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = SKIP.search(line)
            if match:
                skips.append(
                    (path.relative_to(ROOT), number, match["id"], (match["reason"] or "").strip())
                )
    unjustified = [f"{p}:{n} {i}" for p, n, i, reason in skips if len(reason) < 20]
    assert not unjustified, "checkov skips need a reason after the id:\n" + "\n".join(unjustified)
