"""
# helical_annotation

Cell-type annotation: learn labels from a labelled reference dataset and
transfer them to query datasets, with held-out scores beside a PCA baseline.

**Runs** when the `helical_embeddings` asset gets new embeddings (the
events' `extra` name the dataset, model and output), or by hand.

**Params**: `reference` (the labelled `.h5ad` of counts; default: the Airflow
Variable `helical_annotation_reference`, else env `HELICAL_ANNOTATION_REFERENCE`;
with none the run is skipped), `label_key`, `embeddings` (by hand:
`[{"dataset", "model", "output"}]` records of the queries' embeddings; an
asset-triggered run takes them from its events), `queries` (default: every
embedded dataset but the reference), `models` (default: every model the
queries have embeddings of), `baseline` (also the `pca` baseline on
counts), `min_confidence` (below it a cell is `unknown`), `output_root`.

**Steps**: plan -> train one classifier per (reference, model; kept under
`<output_root>/classifiers/`, so later runs reuse it) -> predict
each query x model (mapped) -> report (macro-F1, per-class
precision/recall, confusion matrices, every model beside the baseline) ->
provenance. Each step is one `helical-runner annotate ...` on the
configured backend. See `docs/annotation.md`.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from airflow.sdk import Asset, Param, Variable, dag, get_current_context, task  # noqa: E402 (after the sys.path fix)
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException  # noqa: E402 (after the sys.path fix)

from helical_workflow import annotation, plan, profiles, provenance  # noqa: E402 (after the sys.path fix)
from helical_workflow.backend import run_runner  # noqa: E402 (after the sys.path fix)

EMBEDDINGS = Asset(name=annotation.EMBEDDINGS_ASSET[0], uri=annotation.EMBEDDINGS_ASSET[1])
ANNOTATIONS = Asset(name=annotation.ANNOTATIONS_ASSET[0], uri=annotation.ANNOTATIONS_ASSET[1])
OUTPUT_ROOT = os.environ.get("HELICAL_OUTPUT_ROOT") or str(profiles.REPO_ROOT / "runs")
REFERENCE_VARIABLE = "helical_annotation_reference"
RETRY_DELAY = timedelta(seconds=float(os.environ.get("HELICAL_RETRY_DELAY_S", "30")))


def _labels(ti) -> dict[str, str]:
    return {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id}


@dag(
    dag_id="helical_annotation",
    schedule=[EMBEDDINGS],
    catchup=False,
    doc_md=__doc__,
    tags=["helical", "annotation"],
    params={
        "reference": Param(os.environ.get("HELICAL_ANNOTATION_REFERENCE", ""), type="string"),
        "label_key": Param("cell_type", type="string"),
        "embeddings": Param([], type="array", description='[{"dataset", "model", "output"}]'),
        "queries": Param(None, type=["null", "array"], description="datasets to label"),
        "models": Param(None, type=["null", "array"], description="models to train"),
        "baseline": Param(True, type="boolean", description="also the pca baseline"),
        "min_confidence": Param(0.5, type="number", minimum=0, maximum=0.99),
        "output_root": Param(OUTPUT_ROOT, type="string"),
    },
    default_args={
        # Only transient runner failures reach these retries (exit 2 and 1 fail at once).
        "retries": 3,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=15),
    },
    render_template_as_native_obj=True,
)
def helical_annotation():
    @task(inlets=[EMBEDDINGS])
    def plan_run(params=None, run_id=None, triggering_asset_events=None, inlet_events=None) -> dict:
        """Classifiers to train and queries to label, from the params or the asset events."""
        reference = params["reference"] or Variable.get(REFERENCE_VARIABLE, default="")
        if not reference:
            raise AirflowSkipException(
                f"no reference dataset: set the 'reference' param, the Airflow Variable "
                f"{REFERENCE_VARIABLE} or HELICAL_ANNOTATION_REFERENCE"
            )
        triggering = [e for events in (triggering_asset_events or {}).values() for e in events]
        recent = (
            inlet_events[EMBEDDINGS].ascending(False).limit(annotation.RECENT_EVENTS)
            if triggering
            else []
        )
        extras = annotation.events_of_source_runs(triggering, list(recent))
        try:
            return annotation.plan_annotation(
                reference=reference,
                embeddings=params["embeddings"] or annotation.embeddings_from_events(extras),
                queries=params["queries"],
                models=params["models"],
                baseline=params["baseline"],
                output_root=params["output_root"],
                run_root=plan.join(params["output_root"], plan.safe_run_id(run_id)),
            )
        except annotation.AnnotationError as exc:
            raise AirflowFailException(str(exc)) from exc

    @task
    def pick(planned: dict, key: str) -> list:
        return planned[key]

    @task(map_index_template="{{ job['model'] }}")
    def train(job: dict, params=None) -> dict:
        """`helical-runner annotate train`: classifier + held-out scores (idempotent)."""
        ctx = get_current_context()
        # a model's classifier embeds the reference first: it gets that model's profile
        profile = (
            None if job["model"] == annotation.BASELINE else profiles.load_profile(job["model"])
        )
        run_runner(
            annotation.train_args(job, label_key=params["label_key"], labels=_labels(ctx["ti"])),
            what=f"train {job['model']} classifier",
            context=ctx,
            profile=profile,
            timeout_s=profile["timeout_minutes"] * 60 if profile else None,
            local_paths=[job["reference"]],
            output_root=job["output"].rsplit("/", 3)[0],
        )
        return job

    # all_done: one model's failed training fails only its own predictions
    # (the runner says the classifier is missing); the others go on.
    @task(
        trigger_rule="all_done",
        outlets=[ANNOTATIONS],
        map_index_template="{{ job['query_name'] }}/{{ job['model'] }}",
    )
    def predict(job: dict, params=None) -> dict:
        """`helical-runner annotate predict`: labels + confidence (streamed, resumable)."""
        ctx = get_current_context()
        run_runner(
            annotation.predict_args(
                job, min_confidence=params["min_confidence"], labels=_labels(ctx["ti"])
            ),
            what=f"label {job['query_name']} with {job['model']}",
            context=ctx,
            local_paths=[job["input"]],
            output_root=job["output"].rsplit("/", 3)[0],
        )
        ctx["outlet_events"][ANNOTATIONS].extra = {
            k: job[k] for k in ("query", "model", "output", "classifier")
        }
        return job

    @task(trigger_rule="all_done")
    def report(planned: dict, trained: list, predicted: list) -> str:
        """Every trained model beside the baseline: one HTML page."""
        if not planned:
            raise AirflowSkipException("nothing was planned")
        trained = [t for t in (trained or []) if t]
        if not trained:
            raise AirflowFailException("no classifier was trained; see the train tasks")
        run_runner(
            annotation.report_args(
                # the folder: every classifier of this reference, earlier runs' included
                classifiers=[planned["classifiers"]],
                predictions=[p["output"] for p in (predicted or []) if p],
                output_dir=planned["report_dir"],
            ),
            what="annotation report",
            context=get_current_context(),
            output_root=planned["root"],
        )
        return plan.join(planned["report_dir"], "annotation.html")

    @task(trigger_rule="all_done")
    def record_provenance(
        planned: dict, trained: list, predicted: list, page: str | None, params=None, run_id=None
    ) -> str:
        """`provenance.json`: params, every classifier and labelled query with its status."""
        if not planned:
            raise AirflowSkipException("nothing was planned")
        record = annotation.build_record(
            dag_id="helical_annotation",
            run_id=run_id,
            params=dict(params),
            planned=planned,
            trained=[t for t in (trained or []) if t],
            predicted=[p for p in (predicted or []) if p],
            report=page,
        )
        where = plan.join(planned["root"], "provenance.json")
        run_runner(
            ["provenance", "--output", where, "--record-z", provenance.encode_record(record)],
            what="write provenance",
            context=get_current_context(),
            output_root=planned["root"],
        )
        missing = [
            f"{e['model']}" + (f" on {e['query_name']}" if "query_name" in e else "")
            for e in record["classifiers"] + record["predictions"]
            if e["status"] == "missing"
        ]
        if missing or not page:
            raise AirflowFailException(
                f"provenance written to {where}; missing: {missing or ['report']}"
            )
        return where

    planned = plan_run()
    trained = train.expand(job=pick.override(task_id="trains")(planned, "trains"))
    predicted = predict.expand(job=pick.override(task_id="predicts")(planned, "predicts"))
    trained >> predicted
    page = report(planned, trained, predicted)
    record_provenance(planned, trained, predicted, page)


helical_annotation()
