"""
# helical_embedding

Embed single-cell datasets (`.h5ad`) with Helical foundation models.

**Params**: `datasets` (files, folders or `s3://` prefixes), `models`
(`geneformer`, `scgpt`, `uce`), `output_root`, `profile_overrides`
(model -> profile fields, e.g. `{"geneformer": {"cells_per_shard": 500}}`),
`label_key` (obs column for the report, default `cell_type`).

**Steps**: resolve the inputs -> validate each dataset (bad input fails at
once, no retries) -> plan shards from each model's resource profile -> embed
every dataset x model x shard (one mapped task per run of consecutive shards,
one warm runner process each, in the pool of the profile's GPU type) -> merge shards into one output per dataset and model ->
report (kNN label transfer and silhouette vs a PCA baseline, UMAPs, HTML) ->
provenance record.

**Outputs** under `<output_root>/<run id>/`: `<dataset>/embeddings/<model>.h5ad`
(+ `.manifest.json`), `<dataset>/report/report.html`, `provenance.json`.
Each merged output is an event of the `helical_embeddings` asset (its `extra`
says which dataset, model and URI), so downstream DAGs can run on new
embeddings.

**Backend** (chosen when the file is parsed): env `HELICAL_BACKEND` = `local`
(subprocess through Airflow's SubprocessHook, default), `docker` (DockerOperator)
or `kubernetes` (KubernetesPodOperator). Every runner step (ls, validate,
embed, merge, report, provenance) is that operator, mapped over the jobs the
plan hands it. See `docs/workflow.md`.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

# Airflow 3 parses DAG bundles without putting the bundle on sys.path; the
# logic package lives beside this file, so make it importable wherever the
# file is parsed or run (dag processor, Celery worker, pod, pytest).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from airflow.sdk import Asset, Param, dag, task  # noqa: E402 (after the sys.path fix)
from airflow.sdk.exceptions import AirflowFailException  # noqa: E402 (after the sys.path fix)

from helical_workflow import backend, inputs, jobs, plan, profiles, provenance  # noqa: E402

# One asset for all embeddings: output URIs depend on the run, so per-URI assets
# could not be declared when the DAG is parsed; each event's extra names the output.
EMBEDDINGS = Asset(name="helical_embeddings", uri="helical://embeddings")
REPORTS = Asset(name="helical_reports", uri="helical://reports")

OUTPUT_ROOT = os.environ.get("HELICAL_OUTPUT_ROOT") or str(profiles.REPO_ROOT / "runs")
DEMO_DATA = str(profiles.REPO_ROOT / "runs" / "demo-data")
RETRY_DELAY = timedelta(seconds=float(os.environ.get("HELICAL_RETRY_DELAY_S", "30")))
# The runner steps' operator: LocalRunnerOperator, RunnerDockerOperator or RunnerPodOperator.
Runner = backend.runner_operator()
JOB_LABEL = "{{ task.job_label }}"
log = logging.getLogger(__name__)


def _dag_params() -> dict:
    return {
        "datasets": Param(
            [DEMO_DATA], type="array", description=".h5ad files, folders or s3:// prefixes"
        ),
        "models": Param(
            ["geneformer"], type="array", description=f"any of {profiles.available_models()}"
        ),
        "output_root": Param(
            OUTPUT_ROOT, type="string", description="folder or s3:// prefix for outputs"
        ),
        "profile_overrides": Param(
            {},
            type="object",
            description='model -> profile fields, e.g. {"geneformer": {"cells_per_shard": 500}}',
        ),
        "label_key": Param("cell_type", type="string", description="obs column with cell labels"),
        "dry_run": Param(
            False,
            type="boolean",
            description="quote only: validate the datasets and write the time and cost "
            "estimate (write_provenance log, provenance.json); embed nothing",
        ),
    }


def _checked(fn, *args, **kwargs):
    """Bad parameters fail the task at once (no retry), with the reason."""
    try:
        return fn(*args, **kwargs)
    except (inputs.InputError, profiles.ProfileError) as exc:
        raise AirflowFailException(str(exc)) from exc


@dag(
    dag_id="helical_embedding",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["helical", "embeddings"],
    params=_dag_params(),
    default_args={
        # Only transient failures reach these retries: bad input and bugs raise
        # AirflowFailException (helical_workflow.runner.raise_for_exit).
        "retries": 3,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=15),
    },
    render_template_as_native_obj=True,
)
def helical_embedding():
    @task
    def ls_jobs(params=None) -> list[dict]:
        """`helical-runner ls` for each s3:// prefix (only runner pods may read the bucket)."""
        _checked(inputs.check_output_root, params["output_root"])
        return _checked(jobs.ls_jobs, params["datasets"])

    @task(trigger_rule="none_failed")
    def resolve(listed: list, params=None) -> list[dict]:
        """Folders/prefixes -> files; models and overrides checked before any work."""
        found = jobs.listed_prefixes(listed)
        uris = _checked(inputs.expand_datasets, params["datasets"], list_s3=found.__getitem__)
        _checked(plan.models_and_overrides, params)
        names = inputs.dataset_names(uris)
        return jobs.validate_jobs([{"uri": u, "name": names[u]} for u in uris])

    @task(trigger_rule="all_done")
    def plan_shards(validated: list, params=None, run_id=None, dag=None) -> dict:
        """Shards from each profile's cells_per_shard, embedded by warm runners in runs of
        consecutive shards sized from the profile's cells/s and start-up, by pool; merges;
        reports (datasets that passed validation go on even when others failed)."""
        good = jobs.validated_datasets(validated)
        if not good:
            raise AirflowFailException("no dataset passed validation: see the validate task logs")
        models, overrides = _checked(plan.models_and_overrides, params)
        root = plan.run_root(params["output_root"], run_id)
        planned = plan.plan_run(
            validated=good,
            models=models,
            overrides=overrides,
            run_root=root,
            slots=backend.executor_slots(),
            gpus=backend.gives_gpus(),
        )
        planned = plan.unless_dry_run(planned, params)
        for pool in profiles.known_pools():
            task_id = f"embed_{plan.task_suffix(pool)}"
            planned[task_id] = jobs.embed_jobs(
                planned[pool], dag_id=dag.dag_id, task_id=task_id, run_id=run_id
            )
        planned["merge_jobs"] = jobs.merge_jobs(planned["merges"])
        return planned

    @task
    def pick(planned: dict, key: str) -> list:
        """One list of the plan (Airflow maps only over a task's whole return value)."""
        return planned[key]

    @task(trigger_rule="all_done")
    def report_jobs(planned: dict, merged: list, params=None) -> list:
        # no plan (no dataset passed validation): nothing to report
        reports = (planned or {}).get("reports") or []
        return jobs.report_jobs(reports, merged, label_key=params["label_key"])

    @task(trigger_rule="all_done")
    def provenance_job(
        datasets: list, validated: list, planned: dict, merged: list, reports: list, **ctx
    ) -> list:
        """The run's record (params, validations, outputs, manifests, reports), for the runner."""
        record = provenance.build_record(
            dag_id=ctx["dag"].dag_id,
            run_id=ctx["run_id"],
            params=dict(ctx["params"]),
            datasets=[j["job_result"] for j in datasets or []],
            validated=jobs.validated_datasets(validated),
            planned=planned or {},
            merged=[m for m in (merged or []) if m],
            reports=[r for r in (reports or []) if r],
        )
        record["quote"] = plan.quote_hints(
            ctx["params"], planned or {}, gpus=backend.gives_gpus(), slots=backend.executor_slots()
        )
        root = plan.run_root(ctx["params"]["output_root"], ctx["run_id"])
        return [jobs.provenance_job(record, run_root=root)]

    @task
    def record_provenance(written: list) -> str:
        """The run fails here, after provenance is written, when anything is missing."""
        (result,) = written
        if result.get("quote"):
            log.info("%s", result["quote"])  # the estimate beside what was measured
        if result["problems"]:
            message = f"provenance written to {result['provenance']}; " + "; ".join(
                result["problems"]
            )
            log.error(message)  # the verdict reads plainly in the task log
            raise AirflowFailException(message)
        return result["provenance"]

    step = Runner.partial
    listed = step(task_id="ls", map_index_template=JOB_LABEL).expand_kwargs(ls_jobs())
    datasets = resolve(listed.output)
    validated = step(task_id="validate", map_index_template=JOB_LABEL).expand_kwargs(datasets)
    planned = plan_shards(validated.output)
    embedded = []
    for pool in profiles.known_pools():
        task_id = f"embed_{plan.task_suffix(pool)}"
        embedded.append(
            step(
                task_id=task_id,
                pool=pool,
                map_index_template=JOB_LABEL,
                execution_timeout=timedelta(minutes=plan.longest_timeout_minutes(pool) + 10),
            ).expand_kwargs(
                pick.override(task_id=f"shards_{plan.task_suffix(pool)}")(planned, task_id)
            )
        )
    # all_done: a failed shard fails only its own dataset x model
    # (the runner's merge names the missing shard); the other merges go on.
    merged = step(
        task_id="merge", trigger_rule="all_done", outlets=[EMBEDDINGS], map_index_template=JOB_LABEL
    ).expand_kwargs(pick.override(task_id="merges")(planned, "merge_jobs"))
    embedded >> merged
    reports = step(task_id="report", outlets=[REPORTS], map_index_template=JOB_LABEL).expand_kwargs(
        report_jobs(planned, merged.output)
    )
    written = step(task_id="write_provenance", map_index_template=JOB_LABEL).expand_kwargs(
        provenance_job(datasets, validated.output, planned, merged.output, reports.output)
    )
    record_provenance(written.output)


helical_embedding()
