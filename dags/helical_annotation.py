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

from airflow.sdk import Asset, Param, Variable, dag, task  # noqa: E402 (after the sys.path fix)
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException  # noqa: E402 (after the sys.path fix)

from helical_workflow import annotation, backend, plan, profiles  # noqa: E402 (after the sys.path fix)

EMBEDDINGS = Asset(name=annotation.EMBEDDINGS_ASSET[0], uri=annotation.EMBEDDINGS_ASSET[1])
ANNOTATIONS = Asset(name=annotation.ANNOTATIONS_ASSET[0], uri=annotation.ANNOTATIONS_ASSET[1])
OUTPUT_ROOT = os.environ.get("HELICAL_OUTPUT_ROOT") or str(profiles.REPO_ROOT / "runs")
REFERENCE_VARIABLE = "helical_annotation_reference"
RETRY_DELAY = timedelta(seconds=float(os.environ.get("HELICAL_RETRY_DELAY_S", "30")))
# The runner steps' operator (same backends as helical_embedding).
Runner = backend.runner_operator()
JOB_LABEL = "{{ task.job_label }}"


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
    def trains(planned: dict, params=None, run_id=None, dag=None) -> list:
        return annotation.train_jobs(
            planned, label_key=params["label_key"], dag_id=dag.dag_id, run_id=run_id
        )

    @task
    def predicts(planned: dict, params=None, run_id=None, dag=None) -> list:
        return annotation.predict_jobs(
            planned, min_confidence=params["min_confidence"], dag_id=dag.dag_id, run_id=run_id
        )

    @task(trigger_rule="all_done")
    def report_jobs(planned: dict, trained: list, predicted: list) -> list:
        """Every trained model beside the baseline: one HTML page."""
        if not planned:
            raise AirflowSkipException("nothing was planned")
        if not [t for t in trained or [] if t]:
            raise AirflowFailException("no classifier was trained; see the train tasks")
        return annotation.report_jobs(planned, [p for p in predicted or [] if p])

    @task(trigger_rule="all_done")
    def provenance_jobs(
        planned: dict, trained: list, predicted: list, reported: list, params=None, **ctx
    ) -> list:
        """`provenance.json`: params, every classifier and labelled query with its status."""
        if not planned:
            raise AirflowSkipException("nothing was planned")
        record = annotation.build_record(
            dag_id=ctx["dag"].dag_id,
            run_id=ctx["run_id"],
            params=dict(params),
            planned=planned,
            trained=[t for t in (trained or []) if t],
            predicted=[p for p in (predicted or []) if p],
            report=next((r["html"] for r in reported or [] if r), None),
        )
        return annotation.provenance_jobs(record, root=planned["root"])

    @task
    def record_provenance(written: list) -> str:
        """The run fails here, after provenance is written, when anything is missing."""
        (result,) = written
        if result["problems"]:
            raise AirflowFailException(
                f"provenance written to {result['provenance']}; " + "; ".join(result["problems"])
            )
        return result["provenance"]

    step = Runner.partial
    planned = plan_run()
    trained = step(task_id="train", map_index_template=JOB_LABEL).expand_kwargs(trains(planned))
    # all_done: one model's failed training fails only its own predictions
    # (the runner says the classifier is missing); the others go on.
    predicted = step(
        task_id="predict",
        trigger_rule="all_done",
        outlets=[ANNOTATIONS],
        map_index_template=JOB_LABEL,
    ).expand_kwargs(predicts(planned))
    trained >> predicted
    reported = step(task_id="report", map_index_template=JOB_LABEL).expand_kwargs(
        report_jobs(planned, trained.output, predicted.output)
    )
    written = step(task_id="write_provenance", map_index_template=JOB_LABEL).expand_kwargs(
        provenance_jobs(planned, trained.output, predicted.output, reported.output)
    )
    record_provenance(written.output)


helical_annotation()
