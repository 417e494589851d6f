"""Shared fixtures: an isolated helical cache, a demo model store, generated datasets.

Everything runs offline: the demo store holds tiny random weights in the
exact layout helical loads, and the runner never lets helical reach the
network once a store is configured.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helical_runner import cli, store
from helical_runner.demo_data import write_demo_dataset

# Real vocabularies and datasets fetched by `scripts/bootstrap.sh runner` (runner_data).
RUNNER_DATA = Path(__file__).resolve().parents[3] / ".cache" / "runner-data"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """helical's cache and the runner's input cache live in the test session's tmp dir."""
    assert (RUNNER_DATA / ".stamp").is_file(), (
        f"{RUNNER_DATA} is missing: run scripts/bootstrap.sh runner (fetches real vocabularies and datasets)"
    )
    os.environ[store.GENE_SOURCES_ENV] = str(RUNNER_DATA)
    root = tmp_path_factory.mktemp("helical-home")
    os.environ["CACHE_DIR_HELICAL_PREFIX"] = str(root)
    os.environ["HELICAL_RUNNER_CACHE"] = str(root / "runner-cache")
    os.environ["HELICAL_RUNNER_LOG_FORMAT"] = "json"
    os.environ.pop(store.STORE_ENV, None)
    os.environ.pop("HELICAL_RUNNER_PUSHGATEWAY", None)
    return root


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "demo"
    store.build_demo_bundle(path)
    return path


@pytest.fixture(scope="session")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """2,000-cell datasets: Ensembl ids and symbols, CSR/CSC/dense, counts in X/layers/raw."""
    root = tmp_path_factory.mktemp("data")
    made = {}
    for ids in ("ensembl", "symbol"):
        for layout in ("csr", "csc", "dense"):
            name = f"{ids}-{layout}"
            made[name] = write_demo_dataset(
                root / f"{name}.h5ad", n_cells=2000, gene_ids=ids, layout=layout
            )
    made["layers"] = write_demo_dataset(root / "layers.h5ad", n_cells=300, counts_in="layers")
    made["raw"] = write_demo_dataset(
        root / "raw.h5ad", n_cells=300, counts_in="raw", gene_ids="ensembl-versioned"
    )
    return made


def run(*args) -> int:
    """Run the CLI in-process; returns the exit code."""
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        return exc.code


def run_captured(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = run(*args)
    out, err = capsys.readouterr()
    return code, out, err


def runner_process(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """The CLI as a separate process (for signals, exit codes and log format)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "helical_runner.cli", *map(str, args)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def moto_s3():
    """moto's S3 server on loopback; yields its endpoint URL."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        exe = shutil.which("moto_server")
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(up, 30, "moto server")
    old = {
        k: os.environ.get(k)
        for k in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "HELICAL_RUNNER_S3_ENDPOINT_URL",
        )
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        HELICAL_RUNNER_S3_ENDPOINT_URL=url,
    )
    from helical_runner import storage

    storage._S3_CLIENT = None
    yield url
    proc.terminate()
    proc.wait(10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    storage._S3_CLIENT = None
