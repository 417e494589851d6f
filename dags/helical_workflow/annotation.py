"""Cell-type annotation runs: which classifiers to train, which queries to label, and the
``helical-runner annotate`` command lines that do it.

Layout::

    <output_root>/classifiers/<reference>-<hash>/<model>.npz
        one per (reference, model), shared by runs, + .manifest.json (sha256, scores)
        (+ <model>.npz.reference-embeddings.h5ad: the reference embedded by train)
    <output_root>/<run>/annotation/
        <query>/<model>.h5ad           obs['<model>_label'] + confidence, + .manifest.json
    report/annotation.html         every model beside the pca baseline
    provenance.json                the run's record
"""

from __future__ import annotations

from typing import Any

from . import inputs, jobs, plan, profiles

BASELINE = "pca"
# The helical_embedding DAG's merge outlet (name, uri); this DAG is scheduled on it.
EMBEDDINGS_ASSET = ("helical_embeddings", "helical://embeddings")
ANNOTATIONS_ASSET = ("helical_annotations", "helical://annotations")


class AnnotationError(ValueError):
    """The run's parameters cannot make an annotation plan."""


# How far back a run looks for its embedding runs' other events (most recent first).
RECENT_EVENTS = 1000


def events_of_source_runs(triggering: list[Any], recent: list[Any]) -> list[dict[str, Any]]:
    """The ``extra`` of every recent event that comes from an embedding run which
    triggered this run, triggering events included.

    Airflow 3.3.2 can drop an event that lands while the run it belongs with is being
    created (it starts no run and is linked to none); those events are still in the
    asset's history, so a run labels all of its embedding runs' outputs so far.

    :param triggering: this run's triggering asset events (``source_dag_id``,
        ``source_run_id``, ``extra``).
    :param recent: the asset's recent events (its inlet events), any order.
    """
    runs = {(e.source_dag_id, e.source_run_id) for e in triggering}
    # the same event may come twice (triggering and recent): embeddings_from_events dedups
    return [e.extra for e in triggering] + [
        e.extra for e in recent if (e.source_dag_id, e.source_run_id) in runs
    ]


def embeddings_from_events(extras: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Embedding outputs named by ``helical_embeddings`` asset events (their ``extra``).

    Events without the fields the embedding DAG's merge task sets are ignored;
    the same output named twice is kept once.
    """
    found: dict[str, dict[str, str]] = {}
    for extra in extras:
        if extra and all(extra.get(k) for k in ("dataset", "model", "output")):
            found.setdefault(
                extra["output"], {k: str(extra[k]) for k in ("dataset", "model", "output")}
            )
    return list(found.values())


def classifier_root(output_root: str, reference: str) -> str:
    """Where a reference's classifiers live, shared by every run: trained once per
    (reference, model), found done by later runs (the runner's run key)."""
    import hashlib

    name = inputs.dataset_names([reference])[reference]
    return plan.join(
        output_root, "classifiers", f"{name}-{hashlib.sha256(reference.encode()).hexdigest()[:8]}"
    )


def plan_annotation(
    *,
    reference: str,
    embeddings: list[dict[str, str]],
    queries: list[str] | None,
    models: list[str] | None,
    baseline: bool,
    output_root: str,
    run_root: str,
) -> dict[str, Any]:
    """Train jobs (one per model), predict jobs (one per query x model) and the report job.

    :param reference: the labelled reference dataset (``.h5ad`` of counts); ``train``
        embeds it itself, once per model, so it needs no embedding run of its own.
    :param embeddings: ``{"dataset", "model", "output"}`` records of the queries' embeddings.
    :param queries: datasets to label; default every embedded dataset but the reference.
    :param models: models to train; default every model the queries have embeddings of.
    :param baseline: also train and apply the ``pca`` baseline (on counts).
    :param output_root: the outputs folder or ``s3://`` prefix (classifiers live under it).
    :param run_root: this run's output folder or prefix.
    """
    if not reference:
        raise AnnotationError("no reference dataset given: set the 'reference' parameter")
    if queries is None:
        queries = list(dict.fromkeys(e["dataset"] for e in embeddings if e["dataset"] != reference))
    wanted = list(dict.fromkeys(models or sorted({e["model"] for e in embeddings})))
    wanted = [m for m in wanted if m != BASELINE] + ([BASELINE] if baseline else [])
    if not wanted:
        raise AnnotationError("nothing to train: no models given and no embeddings named")
    names = inputs.dataset_names(queries)
    root = plan.join(run_root, "annotation")
    classifiers = classifier_root(output_root, reference)
    trains = [
        {"model": m, "reference": reference, "output": plan.join(classifiers, f"{m}.npz")}
        for m in wanted
    ]
    classifier = {t["model"]: t["output"] for t in trains}
    predicts, skipped = [], []
    for query in queries:
        embedded = {e["model"]: e["output"] for e in embeddings if e["dataset"] == query}
        for m in wanted:
            source = query if m == BASELINE else embedded.get(m)
            if source is None:
                skipped.append({"query": query, "model": m, "why": "no embedding of the query"})
                continue
            predicts.append(
                {
                    "query": query,
                    "query_name": names[query],
                    "model": m,
                    "classifier": classifier[m],
                    "input": source,
                    "output": plan.join(root, names[query], f"{m}.h5ad"),
                }
            )
    return {
        "reference": reference,
        "classifiers": classifiers,
        "trains": trains,
        "predicts": predicts,
        "skipped": skipped,
        "report_dir": plan.join(root, "report"),
        "root": root,
    }


def _run_labels(*, dag_id: str, task_id: str, run_id: str) -> dict[str, str]:
    return {"dag_id": dag_id, "task_id": task_id, "run_id": run_id}


def train_jobs(
    planned: dict[str, Any], *, label_key: str, dag_id: str, run_id: str, task_id: str = "train"
) -> list[dict[str, Any]]:
    """One ``annotate train`` step per model (the runner step operator's keyword arguments).

    A model's classifier embeds the reference first, so it gets that model's
    resources and timeout; the baseline is light.
    """
    labels = _run_labels(dag_id=dag_id, task_id=task_id, run_id=run_id)
    out = []
    for job in planned["trains"]:
        profile = None if job["model"] == BASELINE else profiles.load_profile(job["model"])
        out.append(
            {
                "runner_args": train_args(job, label_key=label_key, labels=labels),
                "job_label": job["model"],
                "job_result": job,
                "data_paths": [job["reference"]],
                "output_root": job["output"].rsplit("/", 3)[0],
                "job_resources": (profile or {}).get("resources") or jobs.LIGHT_RESOURCES,
                "timeout_s": profile["timeout_minutes"] * 60 if profile else None,
            }
        )
    return out


def predict_jobs(
    planned: dict[str, Any],
    *,
    min_confidence: float,
    dag_id: str,
    run_id: str,
    task_id: str = "predict",
) -> list[dict[str, Any]]:
    """One ``annotate predict`` step per query x model; its result is the
    ``helical_annotations`` asset event's extra."""
    labels = _run_labels(dag_id=dag_id, task_id=task_id, run_id=run_id)
    return [
        {
            "runner_args": predict_args(job, min_confidence=min_confidence, labels=labels),
            "job_label": f"{job['query_name']}/{job['model']}",
            "job_result": {
                k: job[k] for k in ("query", "query_name", "model", "output", "classifier")
            },
            "data_paths": [job["input"]],
            "output_root": job["output"].rsplit("/", 3)[0],
            "job_resources": jobs.LIGHT_RESOURCES,
        }
        for job in planned["predicts"]
    ]


def report_jobs(planned: dict[str, Any], predicted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``annotate report`` step: every classifier of the reference (earlier runs'
    included: the folder) beside the baseline, and the labelled queries."""
    html = plan.join(planned["report_dir"], "annotation.html")
    return [
        {
            "runner_args": report_args(
                classifiers=[planned["classifiers"]],
                predictions=[p["output"] for p in predicted],
                output_dir=planned["report_dir"],
            ),
            "job_label": "report",
            "job_result": {"html": html},
            "output_root": planned["root"],
            "job_resources": jobs.LIGHT_RESOURCES,
        }
    ]


def provenance_jobs(record: dict[str, Any], *, root: str) -> list[dict[str, Any]]:
    """The ``provenance`` step: the runner writes the run's record (it may write outputs)."""
    missing = [
        f"{e['model']}" + (f" on {e['query_name']}" if "query_name" in e else "")
        for e in record["classifiers"] + record["predictions"]
        if e["status"] == "missing"
    ]
    problems = [f"missing: {missing}"] if missing else []
    if not record["report"]:
        problems.append("no report")
    return [jobs.provenance_job(record, run_root=root, problems=problems)]


def _labels(labels: dict[str, str]) -> list[str]:
    return [arg for k, v in labels.items() if v for arg in ("--run-label", f"{k}={v}")]


def train_args(job: dict[str, Any], *, label_key: str, labels: dict[str, str]) -> list[str]:
    return [
        "annotate", "train", "--reference", job["reference"], "--label-key", label_key,
        "--model", job["model"], "--output", job["output"], *_labels(labels),
    ]  # fmt: skip


def predict_args(
    job: dict[str, Any], *, min_confidence: float, labels: dict[str, str]
) -> list[str]:
    return [
        "annotate", "predict", "--classifier", job["classifier"], "--input", job["input"],
        "--output", job["output"], "--min-confidence", str(min_confidence), *_labels(labels),
    ]  # fmt: skip


def report_args(*, classifiers: list[str], predictions: list[str], output_dir: str) -> list[str]:
    args = ["annotate", "report", "--classifiers", *classifiers, "--output", output_dir]
    return args + (["--predictions", *predictions] if predictions else [])


def build_record(
    *,
    dag_id: str,
    run_id: str,
    params: dict[str, Any],
    planned: dict[str, Any],
    trained: list[dict[str, Any]],
    predicted: list[dict[str, Any]],
    report: str | None,
) -> dict[str, Any]:
    """Every planned classifier and labelled query with ``status`` (done or missing)."""
    done_train = {t["output"] for t in trained}
    done_predict = {p["output"] for p in predicted}
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "params": params,
        "reference": planned.get("reference"),
        "classifiers": [
            {
                **t,
                "manifest": t["output"] + ".manifest.json",
                "status": "trained" if t["output"] in done_train else "missing",
            }
            for t in planned.get("trains", [])
        ],
        "predictions": [
            {
                **p,
                "manifest": p["output"] + ".manifest.json",
                "status": "labelled" if p["output"] in done_predict else "missing",
            }
            for p in planned.get("predicts", [])
        ],
        "skipped": planned.get("skipped", []),
        "report": report,
    }
