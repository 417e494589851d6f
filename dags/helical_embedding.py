"""
# helical_embedding

Embed single-cell datasets (`.h5ad`) with Helical foundation models.

**Params**: `datasets` (files, folders or `s3://` prefixes), `models`
(`geneformer`, `scgpt`, `uce`), `output_root`, `profile_overrides`
(model -> profile fields, e.g. `{"geneformer": {"cells_per_shard": 500}}`),
`label_key` (obs column for the report, default `cell_type`).

**Steps**: resolve the inputs -> validate each dataset (bad input fails at
once, no retries) -> plan shards from each model's resource profile -> embed
every dataset x model x shard (one mapped task per shard, in the pool of the
profile's GPU type) -> merge shards into one output per dataset and model ->
report (kNN label transfer and silhouette vs a PCA baseline, UMAPs, HTML) ->
provenance record.

**Outputs** under `<output_root>/<run id>/`: `<dataset>/embeddings/<model>.h5ad`
(+ `.manifest.json`), `<dataset>/report/report.html`, `provenance.json`.
Each merged output is an event of the `helical_embeddings` asset (its `extra`
says which dataset, model and URI), so downstream DAGs can run on new
embeddings.

**Backend**: env `HELICAL_BACKEND` = `local` (subprocess, default), `docker`
or `kubernetes`. See `docs/workflow.md`.
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

from airflow.sdk import Asset, Param, dag, get_current_context, task  # noqa: E402 (after the sys.path fix)
from airflow.sdk.exceptions import AirflowFailException  # noqa: E402 (after the sys.path fix)

from helical_workflow import inputs, plan, profiles, provenance, runner  # noqa: E402 (after the sys.path fix)
from helical_workflow.backend import run_runner  # noqa: E402 (after the sys.path fix)

# One asset for all embeddings: output URIs depend on the run, so per-URI assets
# could not be declared when the DAG is parsed; each event's extra names the output.
EMBEDDINGS = Asset(name="helical_embeddings", uri="helical://embeddings")
REPORTS = Asset(name="helical_reports", uri="helical://reports")

OUTPUT_ROOT = os.environ.get("HELICAL_OUTPUT_ROOT") or str(profiles.REPO_ROOT / "runs")
DEMO_DATA = str(profiles.REPO_ROOT / "runs" / "demo-data")
RETRY_DELAY = timedelta(seconds=float(os.environ.get("HELICAL_RETRY_DELAY_S", "30")))


def _models_and_overrides(params) -> tuple[list[str], dict]:
    """Requested models (deduplicated, in order) and their profile overrides, checked."""
    models = list(dict.fromkeys(params["models"]))
    if not models:
        raise profiles.ProfileError("no models given: set the 'models' parameter")
    overrides = params.get("profile_overrides") or {}
    unused = sorted(set(overrides) - set(models))
    if unused:
        raise profiles.ProfileError(f"profile_overrides for models not requested: {unused}")
    return models, overrides


def _task_suffix(pool: str) -> str:
    return pool.replace("-", "_")


def _longest_timeout(pool: str) -> int:
    """Pools are fixed at parse time, so each GPU type gets its own embed task; its
    Airflow timeout is the longest profile's (the backend enforces each shard's own)."""
    return max(
        p["timeout_minutes"]
        for p in map(profiles.load_profile, profiles.available_models())
        if profiles.pool_name(p) == pool
    )


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
    }


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
    def list_s3(prefix: str) -> list[str]:
        # Through the runner: only its pods may read the datasets bucket (IRSA).
        found = run_runner(
            ["ls", prefix], what=f"list {prefix}", context=get_current_context(), want_json=True
        )
        return found["datasets"][prefix]

    @task
    def resolve(params=None) -> list[dict]:
        """Expand folders/prefixes into files; check models and overrides before any work."""
        try:
            uris = inputs.expand_datasets(params["datasets"], list_s3=list_s3)
            inputs.check_output_root(params["output_root"])
            models, overrides = _models_and_overrides(params)
            for model in models:
                profile = profiles.load_profile(model, overrides.get(model))
                if profiles.pool_name(profile) not in profiles.known_pools():
                    raise profiles.ProfileError(
                        f"{model}: no Airflow pool for {profiles.pool_name(profile)} "
                        f"(pools: {profiles.known_pools()}); add a profile using that GPU type"
                    )
        except (inputs.InputError, profiles.ProfileError) as exc:
            raise AirflowFailException(str(exc)) from exc
        names = inputs.dataset_names(uris)
        return [{"uri": u, "name": names[u]} for u in uris]

    @task(map_index_template="{{ dataset['name'] }}")
    def validate(dataset: dict) -> dict:
        """`helical-runner validate`: fail fast, with the runner's reason, before any GPU time."""
        report = run_runner(
            runner.validate_args(dataset["uri"]),
            what=f"validate {dataset['uri']}",
            context=get_current_context(),
            want_json=True,
            local_paths=[dataset["uri"]],
        )
        return {
            **dataset,
            **{
                k: report.get(k)
                for k in (
                    "n_cells",
                    "n_genes",
                    "label_columns",
                    "counts_location",
                    "matrix_format",
                    "sha256",
                )
            },
        }

    @task(trigger_rule="all_done")
    def plan_shards(validated: list, params=None, run_id=None) -> dict:
        """Shards sized from each profile's cells_per_shard, grouped by pool; merges; reports.

        Runs even when some validations failed: the datasets that passed go on.
        """
        good = [v for v in (validated or []) if v]
        if not good:
            raise AirflowFailException("no dataset passed validation: see the validate task logs")
        models, overrides = _models_and_overrides(params)
        run_root = plan.join(params["output_root"], plan.safe_run_id(run_id))
        planned = plan.plan_run(
            validated=good, models=models, overrides=overrides, run_root=run_root
        )
        out = {pool: planned["shards"].get(pool, []) for pool in profiles.known_pools()}
        out["merges"] = planned["merges"]
        out["reports"] = [
            {
                "dataset": v["uri"],
                "dataset_name": v["name"],
                "embeddings": [m["output"] for m in planned["merges"] if m["dataset"] == v["uri"]],
                "output_dir": plan.join(run_root, v["name"], "report"),
            }
            for v in good
        ]
        out["run_root"] = run_root
        return out

    @task
    def pick(planned: dict, key: str) -> list:
        """One list of the plan (Airflow maps only over a task's whole return value)."""
        return planned[key]

    @task(
        map_index_template="{{ shard['dataset_name'] }}/{{ shard['model'] }}/{{ shard['start'] }}:{{ shard['stop'] }}"
    )
    def embed(shard: dict) -> dict:
        """One `helical-runner embed --cells START:STOP` (resumable and idempotent on its side)."""
        ctx = get_current_context()
        ti = ctx["ti"]
        labels = runner.run_labels(
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            run_id=ti.run_id,
            shard=f"{shard['start']}:{shard['stop']}",
        )
        run_runner(
            runner.embed_args(shard, labels=labels),
            what=f"embed {shard['dataset_name']}/{shard['model']} cells {shard['start']}:{shard['stop']}",
            context=ctx,
            profile=profiles.load_profile(shard["model"], shard.get("overrides")),
            timeout_s=shard["timeout_minutes"] * 60,
            local_paths=[shard["dataset"]],
            output_root=shard["output"].rsplit("/", 4)[0],
        )
        return {k: shard[k] for k in ("dataset", "model", "start", "stop", "output")}

    # all_done: a failed shard fails only its own dataset x model
    # (the runner's merge names the missing shard); the other merges go on.
    @task(
        trigger_rule="all_done",
        outlets=[EMBEDDINGS],
        map_index_template="{{ merge['dataset_name'] }}/{{ merge['model'] }}",
    )
    def merge(merge: dict) -> dict:
        """Shards -> one output per dataset and model, streamed by the runner (bounded memory)."""
        ctx = get_current_context()
        run_runner(
            runner.merge_args(merge),
            what=f"merge {merge['dataset_name']}/{merge['model']}",
            context=ctx,
            local_paths=[merge["dataset"]],
            output_root=merge["output"].rsplit("/", 3)[0],
        )
        result = {k: merge[k] for k in ("dataset", "dataset_name", "model", "output")}
        result["manifest"] = merge["output"] + ".manifest.json"
        ctx["outlet_events"][EMBEDDINGS].extra = result
        return result

    @task(
        trigger_rule="all_done",
        outlets=[REPORTS],
        map_index_template="{{ job['dataset_name'] }}",
    )
    def report(job: dict, merged: list, params=None) -> dict:
        """kNN label transfer + silhouette vs a PCA baseline, UMAPs, `report.html`."""
        ctx = get_current_context()
        done = {m["output"] for m in (merged or []) if m}
        embeddings = [e for e in job["embeddings"] if e in done]
        missing = [e for e in job["embeddings"] if e not in done]
        if not embeddings:
            message = (
                f"no embedding of {job['dataset_name']} was merged; see its embed and merge tasks"
            )
            logging.getLogger(__name__).error(message)
            raise AirflowFailException(message)
        if missing:
            logging.getLogger(__name__).warning(
                "reporting %s without %s: their merge failed", job["dataset_name"], missing
            )
        run_runner(
            runner.report_args(
                dataset=job["dataset"],
                embeddings=embeddings,
                output_dir=job["output_dir"],
                label_key=params["label_key"],
            ),
            what=f"report {job['dataset_name']}",
            context=ctx,
            local_paths=[job["dataset"]],
            output_root=job["output_dir"].rsplit("/", 2)[0],
        )
        result = {
            **job,
            "embeddings": embeddings,
            "html": plan.join(job["output_dir"], "report.html"),
        }
        ctx["outlet_events"][REPORTS].extra = {"dataset": job["dataset"], "html": result["html"]}
        return result

    @task(trigger_rule="all_done")
    def record_provenance(
        datasets: list,
        validated: list,
        planned: dict,
        merged: list,
        reports: list,
        params=None,
        run_id=None,
        dag=None,
    ) -> str:
        """`provenance.json`: params, every dataset's validation, outputs, manifests, reports."""
        record = provenance.build_record(
            dag_id=dag.dag_id,
            run_id=run_id,
            params=dict(params),
            datasets=datasets or [],
            validated=[v for v in (validated or []) if v],
            planned=planned or {},
            merged=[m for m in (merged or []) if m],
            reports=[r for r in (reports or []) if r],
        )
        run_root = plan.join(params["output_root"], plan.safe_run_id(run_id))
        # Written by the runner, which may write outputs (the Airflow role may not).
        where = plan.join(run_root, "provenance.json")
        run_runner(
            ["provenance", "--output", where, "--record-z", provenance.encode_record(record)],
            what="write provenance",
            context=get_current_context(),
            output_root=run_root,
        )
        problems = []
        failed = [d["name"] for d in record["datasets"] if d["status"] != "validated"]
        if failed:
            problems.append(f"failed validation: {failed}")
        missing = [
            f"{o['dataset_name']}/{o['model']}"
            for o in record["outputs"]
            if o["status"] != "merged"
        ]
        if missing:
            problems.append(f"outputs missing (an embed or merge task failed): {missing}")
        unreported = [r["dataset_name"] for r in record["reports"] if r["status"] != "written"]
        if unreported:
            problems.append(f"reports missing: {unreported}")
        if problems:
            # The good outputs are complete, but the run must not look green.
            message = f"provenance written to {where}; " + "; ".join(problems)
            logging.getLogger(__name__).error(message)
            raise AirflowFailException(message)
        return where

    datasets = resolve()
    validated = validate.expand(dataset=datasets)
    planned = plan_shards(validated)
    embedded = []
    for pool in profiles.known_pools():
        shards = pick.override(task_id=f"shards_{_task_suffix(pool)}")(planned, pool)
        embedded.append(
            embed.override(
                task_id=f"embed_{_task_suffix(pool)}",
                pool=pool,
                execution_timeout=timedelta(minutes=_longest_timeout(pool) + 10),
            ).expand(shard=shards)
        )
    merged = merge.expand(merge=pick.override(task_id="merges")(planned, "merges"))
    embedded >> merged
    reports = report.partial(merged=merged).expand(
        job=pick.override(task_id="reports")(planned, "reports")
    )
    record_provenance(datasets, validated, planned, merged, reports)


helical_embedding()
