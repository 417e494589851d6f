"""The whole dags/ folder loads with no import errors, and the DAG has the promised shape."""

from __future__ import annotations

import pytest
from airflow.dag_processing.dagbag import DagBag
from harness import REPO

from helical_workflow import profiles


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "helical_embedding" in dagbag.dag_ids


def test_package_is_not_parsed_as_dags(dagbag):
    # .airflowignore keeps helical_workflow/ out of the DAG processor
    assert not any("helical_workflow" in path for path in dagbag.file_last_changed)


def test_every_dag_has_tags_docs_and_retries(dagbag):
    for dag in dagbag.dags.values():
        assert dag.tags, f"{dag.dag_id} has no tags"
        assert dag.doc_md, f"{dag.dag_id} has no doc_md"
        assert dag.default_args.get("retries", 0) > 0
        assert dag.default_args.get("retry_exponential_backoff")


def test_one_embed_task_per_gpu_pool(dagbag):
    dag = dagbag.dags["helical_embedding"]
    embeds = {t.task_id: t for t in dag.tasks if t.task_id.startswith("embed_")}
    assert {t.pool for t in embeds.values()} == set(profiles.known_pools())
    assert {"gpu-nvidia-a10g", "gpu-nvidia-l40s"} <= set(profiles.known_pools())
    for task in embeds.values():
        # UCE's profile asks 240 min; the task timeout covers the longest profile in its pool
        longest = max(
            profiles.load_profile(m)["timeout_minutes"]
            for m in profiles.available_models()
            if profiles.pool_name(profiles.load_profile(m)) == task.pool
        )
        assert task.execution_timeout.total_seconds() >= longest * 60


def test_params_and_assets(dagbag):
    dag = dagbag.dags["helical_embedding"]
    assert set(dag.params) == {
        "datasets",
        "models",
        "output_root",
        "profile_overrides",
        "label_key",
    }
    assert dag.params["label_key"] == "cell_type"
    merge = dag.get_task("merge")
    assert [a.name for a in merge.outlets] == ["helical_embeddings"]


def test_graph_order(dagbag):
    dag = dagbag.dags["helical_embedding"]
    assert dag.get_task("validate").upstream_task_ids == {"resolve"}
    assert dag.get_task("plan_shards").trigger_rule == "all_done"
    assert {"embed_gpu_nvidia_a10g", "embed_gpu_nvidia_l40s"} <= dag.get_task(
        "merge"
    ).upstream_task_ids
    assert "merge" in dag.get_task("report").upstream_task_ids
