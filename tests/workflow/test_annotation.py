"""The annotation DAG's logic (no scheduler, no runner) and its shape in the DAG folder."""

from __future__ import annotations

import pytest
from airflow.dag_processing.dagbag import DagBag
from harness import REPO

from helical_workflow import annotation, backend, provenance

REF = "/data/ref/reference.h5ad"
EVENTS = [
    {"dataset": "/data/q/a.h5ad", "dataset_name": "a", "model": "scgpt", "output": "/runs/r1/a/embeddings/scgpt.h5ad"},
    {"dataset": "/data/q/a.h5ad", "dataset_name": "a", "model": "uce", "output": "/runs/r1/a/embeddings/uce.h5ad"},
    {"dataset": "s3://bucket/b.h5ad", "dataset_name": "b", "model": "scgpt", "output": "s3://out/r1/b/embeddings/scgpt.h5ad"},
    {"dataset": REF, "dataset_name": "reference", "model": "scgpt", "output": "/runs/r1/reference/embeddings/scgpt.h5ad"},
    {"html": "/runs/r1/a/report/report.html"},  # not an embedding event
]  # fmt: skip


def _plan(**kw):
    args = {
        "reference": REF,
        "embeddings": annotation.embeddings_from_events(EVENTS),
        "queries": None,
        "models": None,
        "baseline": True,
        "output_root": "/runs",
        "run_root": "/runs/manual_1",
    }
    return annotation.plan_annotation(**{**args, **kw})


def test_events_give_embedding_records_once_each():
    records = annotation.embeddings_from_events([*EVENTS, EVENTS[0], None, {}])
    assert len(records) == 4
    assert records[0] == {k: EVENTS[0][k] for k in ("dataset", "model", "output")}


def test_plan_trains_once_per_model_and_labels_every_query():
    planned = _plan()
    assert [t["model"] for t in planned["trains"]] == ["scgpt", "uce", "pca"]
    # classifiers are shared by runs: one folder per reference under the output root
    root = planned["classifiers"]
    assert root.startswith("/runs/classifiers/reference-")
    assert {t["output"] for t in planned["trains"]} == {
        f"{root}/{m}.npz" for m in ("scgpt", "uce", "pca")
    }
    # every training starts from the reference dataset (train embeds it itself)
    assert {t["reference"] for t in planned["trains"]} == {REF}
    jobs = {(p["query_name"], p["model"]): p for p in planned["predicts"]}
    # the reference is not a query; b has no uce embedding (skipped, and said so)
    assert set(jobs) == {("a", "scgpt"), ("a", "uce"), ("a", "pca"), ("b", "scgpt"), ("b", "pca")}
    assert planned["skipped"] == [
        {"query": "s3://bucket/b.h5ad", "model": "uce", "why": "no embedding of the query"}
    ]
    assert jobs[("a", "pca")]["input"] == "/data/q/a.h5ad"  # the baseline reads counts
    assert jobs[("b", "scgpt")]["input"] == "s3://out/r1/b/embeddings/scgpt.h5ad"
    assert jobs[("a", "uce")]["output"] == "/runs/manual_1/annotation/a/uce.h5ad"
    assert jobs[("a", "uce")]["classifier"] == f"{root}/uce.npz"
    assert planned["report_dir"] == "/runs/manual_1/annotation/report"


def test_plan_honours_models_queries_and_baseline():
    planned = _plan(models=["scgpt"], queries=["/data/q/a.h5ad"], baseline=False)
    assert [t["model"] for t in planned["trains"]] == ["scgpt"]
    assert [(p["query_name"], p["model"]) for p in planned["predicts"]] == [("a", "scgpt")]
    only_pca = _plan(embeddings=[], queries=["/data/q/a.h5ad"])
    assert [t["model"] for t in only_pca["trains"]] == ["pca"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reference": ""}, "no reference"),
        ({"embeddings": [], "baseline": False}, "nothing to train"),
    ],
)
def test_plans_that_cannot_work_are_refused(change, message):
    with pytest.raises(annotation.AnnotationError, match=message):
        _plan(**change)


def test_runner_command_lines():
    planned = _plan()
    labels = {"dag_id": "helical_annotation", "task_id": "train", "run_id": "r"}
    train = annotation.train_args(planned["trains"][0], label_key="cell_type", labels=labels)
    assert train[:2] == ["annotate", "train"]
    assert train[train.index("--reference") + 1] == REF
    assert train[train.index("--label-key") + 1] == "cell_type"
    assert "dag_id=helical_annotation" in train
    job = planned["predicts"][0]
    predict = annotation.predict_args(job, min_confidence=0.7, labels=labels)
    assert predict[predict.index("--classifier") + 1] == job["classifier"]
    assert predict[predict.index("--min-confidence") + 1] == "0.7"
    report = annotation.report_args(classifiers=["/c"], predictions=[], output_dir="/r")
    assert report == ["annotate", "report", "--classifiers", "/c", "--output", "/r"]


def test_provenance_record_says_what_is_missing():
    planned = _plan()
    record = annotation.build_record(
        dag_id="helical_annotation", run_id="r", params={}, planned=planned,
        trained=planned["trains"][:2], predicted=planned["predicts"][:1], report=None,
    )  # fmt: skip
    assert [c["status"] for c in record["classifiers"]] == ["trained", "trained", "missing"]
    assert [p["status"] for p in record["predictions"]].count("labelled") == 1
    assert record["classifiers"][0]["manifest"].endswith(".npz.manifest.json")
    assert provenance.encode_record(record)  # what the runner's provenance command takes


def test_dag_is_scheduled_on_new_embeddings_and_has_the_promised_shape():
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["helical_annotation"]
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["helical_embeddings"]
    assert dag.get_task("train").upstream_task_ids == {"trains"}
    assert {"train", "predicts"} <= dag.get_task("predict").upstream_task_ids
    assert [a.name for a in dag.get_task("predict").outlets] == ["helical_annotations"]
    # every runner step is the backend's operator, mapped over the jobs the plan makes
    runner = backend.runner_operator()
    for step in ("train", "predict", "report", "write_provenance"):
        assert issubclass(dag.get_task(step).operator_class, runner), step
    assert dag.get_task("report_jobs").trigger_rule == "all_done"
    assert dag.get_task("provenance_jobs").trigger_rule == "all_done"
    assert set(dag.params) >= {
        "reference",
        "label_key",
        "embeddings",
        "queries",
        "models",
        "baseline",
    }


def test_a_run_sees_every_event_of_its_embedding_runs():
    from types import SimpleNamespace as Event

    def event(run, model):
        extra = {
            "dataset": "/q.h5ad",
            "model": model,
            "output": f"/runs/{run}/q/embeddings/{model}.h5ad",
        }
        return Event(source_dag_id="helical_embedding", source_run_id=run, extra=extra)

    trigger = event("r2", "scgpt")
    dropped = event("r2", "uce")  # emitted while Airflow created the run: linked to none
    recent = [dropped, trigger, event("r1", "geneformer"), event("r2", "geneformer")]
    extras = annotation.events_of_source_runs([trigger], recent)
    assert [e["model"] for e in extras] == ["scgpt", "uce", "scgpt", "geneformer"]
    assert {e["output"] for e in annotation.embeddings_from_events(extras)} == {
        "/runs/r2/q/embeddings/scgpt.h5ad",
        "/runs/r2/q/embeddings/uce.h5ad",
        "/runs/r2/q/embeddings/geneformer.h5ad",
    }
