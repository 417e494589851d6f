"""Many DAG runs at once on the Celery stack, with faults (marker ``load``).

Ten runs triggered back to back through the REST API, each over its own dataset
file with two models in two shards (about 230 task instances), on the session's
stack (conftest.py ``workflow``); a Celery worker is SIGKILLed while a runner
embeds, then PostgreSQL is restarted. Every run must end ``success``, every
merged output be whole (its sha256 the one its manifest records, no shard twice,
nothing half-written), and every embedding equal a quiet reference made by the
runner directly. benchmarks/bench_load.py does the driving and the checking; the
same code measures the figures in docs/load.md.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, RUNNER_VENV

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_load

pytestmark = pytest.mark.load

RUNS, MODELS = 10, ["geneformer", "scgpt"]


def quiet_reference(dataset, models, root) -> dict[str, str]:
    """Each model over the dataset in the same two shards, by the runner alone, merged."""
    runner = str(RUNNER_VENV / "bin" / "helical-runner")
    for model in MODELS:
        shards = [root / "shards" / model / f"{a}-{b}.h5ad" for a, b in ((0, 2), (2, 4))]
        argv = [runner, "embed", "--input", str(dataset), "--model", model, "--precision", "fp32",
                "--model-store", str(models)]  # fmt: skip
        for (a, b), out in zip(((0, 2), (2, 4)), shards, strict=True):
            argv += ["--cells", f"{a}:{b}", "--output", str(out)]
        subprocess.run(argv, check=True, capture_output=True, timeout=600)
        merged = root / dataset.stem / "embeddings" / f"{model}.h5ad"
        subprocess.run([runner, "merge", "--output", str(merged), *map(str, shards)],
                       check=True, capture_output=True, timeout=600)  # fmt: skip
    return {k.split("/", 1)[1]: v for k, v in bench_load.embeddings_digest(str(root)).items()}


def test_runs_under_load_survive_a_worker_kill_and_a_postgres_restart(workflow, tmp_path):
    argv = f"--runs {RUNS} --models {' '.join(MODELS)} --cells 4 --cells-per-shard 2"
    argv += " --same-data --digest --faults worker-kill,postgres-restart --fault-gap 20"
    args = bench_load.parser().parse_args([*argv.split(), "--timeout", "1800", "--label", "test"])
    result = bench_load.load(args, workflow.work, stack=workflow.stack)

    assert result["run_states"] == {r: "success" for r in result["run_states"]}
    assert result["runs_succeeded"] == RUNS
    assert [f["fault"] for f in result["faults"]] == ["worker-kill", "postgres-restart"]
    assert "airflow-worker" in result["faults"][0]["restarted"]
    assert "postgres" in result["faults"][1]["restarted"]
    # the killed worker's task ran again; nothing lost, nothing embedded twice
    assert result["tasks_retried"] >= 1
    assert result["outputs_checked"] == RUNS * len(MODELS)
    assert result["data_problems"] == [] and result["lost_or_duplicated"] == 0

    reference = quiet_reference(workflow.work / "data" / "load000.h5ad", workflow.work / "models",
                                tmp_path)  # fmt: skip
    assert sorted(reference) == [f"{m}/X_{m}" for m in sorted(MODELS)]
    for run_id, digests in result["digests"].items():
        got = {k.split("/", 1)[1]: v for k, v in digests.items()}
        assert got == reference, f"{run_id}: embeddings differ from the quiet run's"
