"""The runner's Dockerfiles: lint-clean and saying what the platform relies on.

No container engine exists on our machines, so the images are not built here;
hadolint and checkov (real tools, from .venvs/tools and .venvs/checkov) lint
them, and the remaining tests parse the instructions for the contract the DAG
and the pod specs depend on: entrypoint, non-root fixed UID, cache and model
store variables, pinned versions, no secrets.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER_DIR = ROOT / "runners" / "helical-runner"
DOCKERFILES = {"cpu": RUNNER_DIR / "Dockerfile", "cuda": RUNNER_DIR / "Dockerfile.cuda"}
HADOLINT = ROOT / ".venvs" / "tools" / "bin" / "hadolint"
CHECKOV = ROOT / ".venvs" / "checkov" / "bin" / "checkov"
CONSTRAINTS = ROOT / "requirements" / "runner-constraints.txt"
RUNNER_UID = "10001"

BAD_DOCKERFILE = """\
FROM python:latest
RUN apt-get update && apt-get install -y curl
ENV DB_PASSWORD=hunter2
ADD requirements.txt /x
CMD python -m helical_runner
"""


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    joined, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [(i.split(None, 1)[0].upper(), i.split(None, 1)[1] if " " in i else "") for i in joined]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def env_vars(steps: list[tuple[str, str]]) -> dict[str, str]:
    found = {}
    for op, args in steps:
        if op == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                found[key] = value
    return found


def run_hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, check=False
    )


def run_checkov(*paths: Path) -> dict:
    cmd = [str(CHECKOV), "--framework", "dockerfile", "-o", "json", "--skip-download"]
    for path in paths:
        cmd += ["-f", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


# --- linters, and proof that they bite ------------------------------------------------------
@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_is_clean(image: str) -> None:
    result = run_hadolint(DOCKERFILES[image])
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_finds_nothing_in_either_dockerfile() -> None:
    report = run_checkov(*DOCKERFILES.values())
    assert report["results"]["failed_checks"] == []
    assert report["summary"]["passed"] > 100
    assert report["summary"]["skipped"] == 0


def test_linters_reject_a_careless_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD_DOCKERFILE)
    hadolint = run_hadolint(bad)
    assert hadolint.returncode != 0
    for rule in (
        "DL3007",
        "DL3008",
        "DL3020",
        "DL3025",
    ):  # latest, unpinned apt, ADD for a file, CMD form
        assert rule in hadolint.stdout, rule
    failed = {c["check_id"] for c in run_checkov(bad)["results"]["failed_checks"]}
    assert {"CKV_DOCKER_3", "CKV_DOCKER_7"} <= failed  # no USER, latest tag


# --- the image contract ----------------------------------------------------------------------
@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_multi_stage_with_pinned_bases(image: str) -> None:
    bases = [args.split()[0] for op, args in instructions(DOCKERFILES[image]) if op == "FROM"]
    assert len(bases) >= 2, "build tools must stay out of the runtime stage"
    for base in bases:
        _, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), base


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_runtime_stage_runs_helical_runner_as_fixed_non_root_user(image: str) -> None:
    steps = final_stage(DOCKERFILES[image])
    (user,) = [args for op, args in steps if op == "USER"]
    assert user.split(":")[0] == RUNNER_UID, "pod specs set runAsUser 10001"
    assert f"--uid {RUNNER_UID}" in " ".join(args for op, args in steps if op == "RUN")
    (entrypoint,) = [args for op, args in steps if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["helical-runner"]
    assert ("HEALTHCHECK", "NONE") in steps


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_runtime_stage_sets_cache_and_model_store(image: str) -> None:
    steps = final_stage(DOCKERFILES[image])
    env = env_vars(steps)
    cache = env["CACHE_DIR_HELICAL_PREFIX"]
    assert cache.startswith("/") and env["HELICAL_RUNNER_MODEL_STORE"]
    # the cache dir is created and handed to the runner user before USER switches
    chown = " ".join(args for op, args in steps if op == "RUN")
    assert re.search(rf"chown \S+ [^&]*{re.escape(cache)}", chown), "cache dir not writable"
    (workdir,) = [args for op, args in steps if op == "WORKDIR"]
    assert workdir in chown, "working directory (UCE scratch files) not writable"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_no_secrets_baked_in(image: str) -> None:
    for op, args in instructions(DOCKERFILES[image]):
        if op in {"ENV", "ARG"}:
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", args, re.I), args
    assert "AWS_" not in DOCKERFILES[image].read_text()


def pinned(requirement: str, text: str) -> str:
    """The one version `text` pins `requirement` to (comments ignored)."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    versions = set(re.findall(rf"\b{re.escape(requirement)}==([\w.+-]+)", code))
    assert len(versions) == 1, f"{requirement}: expected one pin, found {versions}"
    return versions.pop()


def test_cpu_image_uses_the_torch_pin_of_the_runner_environment() -> None:
    constraints = pinned("torch", CONSTRAINTS.read_text())
    dockerfile = DOCKERFILES["cpu"].read_text()
    assert pinned("torch", dockerfile) == constraints
    assert "download.pytorch.org/whl/cpu" in dockerfile
    assert pinned("helical", dockerfile) == "3.1.4"


def test_cuda_image_uses_helicals_supported_stack() -> None:
    dockerfile = DOCKERFILES["cuda"].read_text()
    assert re.search(r"^FROM nvidia/cuda:12\.\d+\.\d+-runtime-", dockerfile, re.M)
    assert "python3.12" in dockerfile
    assert pinned("helical", dockerfile) == "3.1.4"
    assert pinned("torch", dockerfile) == "2.10.0"  # helical 3.1.4's own pin


def test_build_context_holds_only_what_the_dockerfiles_copy() -> None:
    ignore = (RUNNER_DIR / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, "the context must be deny-by-default"
    allowed = {line[1:].rstrip("/").split("/")[0] for line in ignore if line.startswith("!")}
    for path in DOCKERFILES.values():
        for op, args in instructions(path):
            if op == "COPY" and "--from=" not in args:
                *sources, _dest = args.split()
                for src in sources:
                    assert src in allowed, f"{path.name}: COPY {src} is excluded by .dockerignore"
                    assert (RUNNER_DIR / src).exists(), f"{path.name}: COPY {src} does not exist"


def test_cpu_image_installs_runtime_requirements_without_test_tools() -> None:
    """The CPU build installs runner.txt (runtime) and never runner-dev.txt (test tools)."""
    dockerfile = DOCKERFILES["cpu"].read_text()
    assert "-r /tmp/requirements/runner.txt" in dockerfile
    assert (
        "-r /tmp/requirements/runner-dev.txt" not in dockerfile
        and "COPY --from=requirements runner-dev" not in dockerfile
    )
    names = lambda f: {  # noqa: E731
        re.split(r"[<>=\[ ]", line)[0]
        for line in (ROOT / "requirements" / f).read_text().splitlines()
        if line and line[0] != "#"
    }
    runtime, dev = names("runner.txt"), names("runner-dev.txt")
    assert {"anndata", "h5py", "boto3", "transformers"} <= runtime
    assert not runtime & {"pytest", "moto", "ruff"}, "test tools would ship in the image"
    assert {"pytest", "moto", "ruff"} <= dev
