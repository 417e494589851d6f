"""Annotation metrics reach a real Pushgateway, and a real Prometheus scraping it answers
every query of the runner dashboard's annotation row (the stack test runs no annotation)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from test_metrics_profiles import pushgateway  # noqa: F401 (the fixture, shared)

from conftest import free_port, run, wait_until
from helical_runner.demo_data import write_demo_dataset

REPO = Path(__file__).resolve().parents[3]


def annotation_exprs() -> list[str]:
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", REPO / "observability/grafana/build_dashboards.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    panels = module.runner_performance()["panels"]
    exprs = [
        t["expr"] for p in panels if p["title"].startswith("Annotation:") for t in p["targets"]
    ]
    assert len(exprs) == 4
    return [e.replace("$model", ".*") for e in exprs]


@pytest.fixture(scope="module")
def prometheus(pushgateway, tmp_path_factory):  # noqa: F811 (the imported fixture)
    exe = shutil.which("prometheus")
    assert exe, "prometheus is installed by scripts/bootstrap.sh system"
    root = tmp_path_factory.mktemp("prometheus")
    target = urllib.parse.urlparse(pushgateway).netloc
    (root / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "pushgateway", "honor_labels": True,
                            "static_configs": [{"targets": [target]}]}],
    }))  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [exe, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200
        except OSError:
            return False

    wait_until(ready, 60, "prometheus")
    yield url
    proc.terminate()
    proc.wait(10)


def query(url: str, expr: str) -> list:
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
        return json.loads(resp.read())["data"]["result"]


def test_annotation_metrics_answer_every_dashboard_query(tmp_path, pushgateway, prometheus):  # noqa: F811
    reference = write_demo_dataset(tmp_path / "reference.h5ad", n_cells=300, seed=3)
    query_set = write_demo_dataset(tmp_path / "query.h5ad", n_cells=100, seed=3)
    run_id = f"annotate-metrics-{uuid.uuid4().hex[:8]}"  # this test's series only
    labels = ["--pushgateway", pushgateway, "--run-label", f"run_id={run_id}"]
    classifier = tmp_path / "pca.npz"
    assert run("annotate", "train", "--reference", reference, "--label-key", "cell_type",
               "--model", "pca", "--output", classifier, *labels) == 0  # fmt: skip
    assert run("annotate", "predict", "--classifier", classifier, "--input", query_set,
               "--output", tmp_path / "labelled.h5ad", *labels) == 0  # fmt: skip
    exprs = annotation_exprs()
    wait_until(lambda: all(query(prometheus, e) for e in exprs), 60, "every annotation panel query")
    f1 = query(prometheus, f'helical_runner_annotate_macro_f1{{run_id="{run_id}"}}')
    manifest = json.loads((tmp_path / "pca.npz.manifest.json").read_text())
    assert [r["metric"]["model"] for r in f1] == ["pca"]
    assert float(f1[0]["value"][1]) == pytest.approx(manifest["scores"]["macro_f1"])
    speed = query(prometheus, f'helical_runner_annotate_cells_per_second{{run_id="{run_id}"}}')
    assert float(speed[0]["value"][1]) > 0
