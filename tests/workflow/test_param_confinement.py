"""DAG params are checked before use: model names are names, datasets and outputs stay in their roots."""

from __future__ import annotations

import pytest

from helical_workflow import inputs, profiles


def _no_s3(prefix):
    raise AssertionError(f"no S3 listing expected, got {prefix}")


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """A deployment allowing datasets under data/ and team-a's prefix, outputs under runs/."""
    (tmp_path / "data").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "other-user").mkdir()
    monkeypatch.setenv(inputs.DATASET_ROOTS_ENV, f"{tmp_path / 'data'},s3://datasets/team-a/")
    monkeypatch.setenv(inputs.OUTPUT_ROOTS_ENV, f"{tmp_path / 'runs'},s3://outputs/team-a")
    return tmp_path


@pytest.mark.parametrize("model", ["../../tmp/x", "/etc/passwd", "geneformer/../scgpt", "", None])
def test_a_model_is_a_profile_name_never_a_path(model, tmp_path, monkeypatch):
    # A profile planted where '../' would lead must not be read either.
    planted = tmp_path / "x.yaml"
    planted.write_text("cells_per_shard: 1\ntimeout_minutes: 1\n")
    with pytest.raises(profiles.ProfileError, match="unknown model"):
        profiles.load_profile(model)


def test_datasets_inside_the_roots_are_accepted(roots):
    (roots / "data" / "a.h5ad").touch()
    assert inputs.expand_datasets([str(roots / "data")], list_s3=_no_s3) == [
        str(roots / "data" / "a.h5ad")
    ]
    listed = inputs.expand_datasets(
        ["s3://datasets/team-a/pbmc/"], list_s3=lambda p: [p + "x.h5ad"]
    )
    assert listed == ["s3://datasets/team-a/pbmc/x.h5ad"]


@pytest.mark.parametrize(
    "spec",
    [
        "{root}/other-user",
        "{root}/data/../other-user",
        "/etc",
        "s3://datasets/team-b/pbmc/",
        "s3://datasets/team-a/../team-b/x.h5ad",
        "s3://datasets/team-a-evil/x.h5ad",
        "file:///etc/passwd",
    ],
)
def test_datasets_outside_the_roots_are_refused_with_the_setting_named(roots, spec):
    spec = spec.format(root=roots)
    (roots / "other-user" / "secret.h5ad").touch()
    with pytest.raises(inputs.InputError, match=r"outside the allowed roots|only local paths"):
        inputs.expand_datasets([spec], list_s3=lambda p: [p + "x.h5ad"])


def test_a_symlink_inside_a_root_cannot_lead_out_of_it(roots):
    (roots / "other-user" / "secret.h5ad").touch()
    (roots / "data" / "link.h5ad").symlink_to(roots / "other-user" / "secret.h5ad")
    with pytest.raises(inputs.InputError, match="outside the allowed roots"):
        inputs.expand_datasets([str(roots / "data")], list_s3=_no_s3)


def test_a_prefix_listing_outside_the_root_is_refused(roots):
    with pytest.raises(inputs.InputError, match="outside the allowed roots"):
        inputs.expand_datasets(
            ["s3://datasets/team-a/"], list_s3=lambda p: ["s3://datasets/team-b/x.h5ad"]
        )


def test_output_root_must_lie_under_an_output_root(roots):
    assert inputs.check_output_root(str(roots / "runs" / "mine")) == str(roots / "runs" / "mine")
    assert inputs.check_output_root("s3://outputs/team-a/x/") == "s3://outputs/team-a/x/"
    for bad in (str(roots / "other-user"), str(roots / "runs" / ".." / "data"),
                "s3://outputs/team-b/", "s3://outputs/team-a/../team-b"):  # fmt: skip
        with pytest.raises(inputs.InputError, match="HELICAL_OUTPUT_ROOTS"):
            inputs.check_output_root(bad)


def test_defaults_are_the_repos_data_and_runs_folders(monkeypatch):
    for env in (inputs.DATASET_ROOTS_ENV, inputs.OUTPUT_ROOTS_ENV, "HELICAL_OUTPUT_ROOT"):
        monkeypatch.delenv(env, raising=False)
    repo = inputs.REPO_ROOT.resolve()
    assert inputs.allowed_roots("datasets") == [str(repo / "data"), str(repo / "runs")]
    assert inputs.allowed_roots("outputs") == [str(repo / "runs")]
    with pytest.raises(inputs.InputError):
        inputs.check_output_root("/tmp/elsewhere")
