"""registry-cli register --run-id: the version names the OpenLineage run that produced it, as CI registers it (the CLI
as a subprocess against a live server; the run's events sent with POST /api/v1/lineage by the same identity)."""

import uuid

import pytest

from accounts import scopes
from lineage import selectors as lineage_selectors
from registry import services as registry_services
from registry.models import BlobHolding, ModelVersion
from tests.conftest import bearer
from tests.lineage.conftest import RAW, ol_dataset, run_event
from tests.registry.test_cli import CI_TOKEN_SCOPES, FAKE_GITHUB, run, summary

live = pytest.mark.django_db(transaction=True)  # the live server thread must see committed rows
TRAIN_COMMIT = "def4567890abcdef"


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"trained weights " + uuid.uuid4().bytes)
    return path


@pytest.fixture
def ci_lineage(personas, make_token) -> str:
    """The ci-bot's token for a training job that sends its run's events and registers what it trained."""
    return make_token(personas["ci_bot"].user, [*CI_TOKEN_SCOPES, scopes.LINEAGE_WRITE])


def send_training_run(token: str, run_uuid: uuid.UUID) -> None:
    """The training run's events: it read a dataset with a digest and ran commit TRAIN_COMMIT."""
    client = bearer(token)
    raw = ol_dataset("s3://lake", "raw/events", version=RAW)
    for event_type, time in (("START", "2026-01-03T00:00:00Z"), ("COMPLETE", "2026-01-03T02:00:00Z")):
        event = run_event(event_type, run_uuid, ("pipelines", "train"), inputs=[raw], commit=TRAIN_COMMIT, time=time)
        response = client.post("/api/v1/lineage", event, format="json")
        assert response.status_code == 201, response.json()


def register(url: str, token: str, path, *options, env=None):
    return run(
        "register",
        "--model",
        "acme/churn",
        "--path",
        str(path),
        "--create-model",
        *options,
        url=url,
        token=token,
        extra_env={**FAKE_GITHUB, **(env or {})},
    )


@live
def test_run_id_links_the_version_to_its_training_run_and_a_rerun_is_idempotent(live_server, ci_lineage, model_file):
    run_uuid = uuid.uuid4()
    send_training_run(ci_lineage, run_uuid)

    out = summary(register(live_server.url, ci_lineage, model_file, "--run-id", str(run_uuid).upper()))
    assert out["number"] == 1 and out["created"] is True
    api = bearer(ci_lineage)
    version = api.get("/api/v1/models/acme/churn/versions/1").json()
    assert version["run_id"] == str(run_uuid)
    # the run's outputs, as the lineage API shows them: the version it produced
    graph = api.get(
        "/api/v1/lineage/graph",
        {"nodeId": f"run:{run_uuid}", "direction": "downstream", "depth": 1, "granularity": "version"},
    ).json()
    assert {"source": f"run:{run_uuid}", "target": "model:acme/churn:1", "kind": "output"} in graph["edges"]
    # what a require_lineage policy reads: the run's input digest and its commit, not the registration's source
    facts = lineage_selectors.version_summary(version=ModelVersion.objects.get())
    assert facts["producing_runs"] == [f"run:{run_uuid}"]
    assert facts["datasets"] == [f"dataset:s3://lake:raw/events#{RAW}"]
    assert (facts["code_commit"], facts["commit_from"]) == (TRAIN_COMMIT, f"run:{run_uuid}")

    # a re-run (here with the id from $REGISTRY_RUN_ID) finds the same version
    again = register(live_server.url, ci_lineage, model_file, env={"REGISTRY_RUN_ID": str(run_uuid)})
    assert summary(again) == {**out, "created": False}
    assert ModelVersion.objects.count() == 1

    # the same files with another run, or with none: refused by the registry (exit 1), saying what to do
    other_run = uuid.uuid4()
    other = register(live_server.url, ci_lineage, model_file, "--run-id", str(other_run))
    assert other.returncode == 1, other.stderr
    assert "HTTP 409 digest_conflict" in other.stderr and '"fields": ["run_id"]' in other.stderr
    assert f"hint: version 1 of acme/churn was registered with another run id, or without one, not {other_run}" in (
        other.stderr
    )
    assert '/api/v1/lineage/links {"nodeId": "model:acme/churn:1"' in other.stderr
    without = register(live_server.url, ci_lineage, model_file)
    assert without.returncode == 1, without.stderr
    assert "HTTP 409 digest_conflict" in without.stderr
    assert "was registered with a run id (the run that produced it), and this command gives none" in without.stderr
    assert ModelVersion.objects.get().run_id == run_uuid


@live
def test_run_id_of_a_run_that_produced_another_teams_model_is_refused(live_server, personas, ci_lineage, model_file):
    """Who may name a run: once it produced a version, only who may register into that model (docs/lineage.md)."""
    owner = personas["owner"].user
    theirs = registry_services.model_create(actor=owner, namespace="team", name="ranker")
    run_uuid = uuid.uuid4()
    registry_services.version_register(
        actor=owner,
        model=theirs,
        content=registry_services.VersionContent(
            manifest={"files": [{"path": "m.bin", "size": 1, "sha256": "0" * 64}]},
            artifact_uri="s3://bucket/team/ranker",
            run_id=run_uuid,
        ),
    )
    result = register(live_server.url, ci_lineage, model_file, "--run-id", str(run_uuid))
    assert result.returncode == 1, result.stderr
    assert "HTTP 403 forbidden" in result.stderr and f"Run {run_uuid} produced a model version" in result.stderr
    assert "team/ranker" not in result.stderr  # a model the ci-bot may not view is not named
    assert not ModelVersion.objects.filter(model__name="churn").exists()
    assert not BlobHolding.objects.exists()  # refused before its files were asked for: none was uploaded


RUN = "3f1c2a9e-5b7d-4e8f-9a01-23456789abcd"


@pytest.mark.parametrize(
    ("options", "env", "message"),
    [
        (["--run-id", "not-a-uuid"], {}, "--run-id 'not-a-uuid' is not an OpenLineage run id"),
        (["--run-id", RUN.replace("-", "")], {}, "(8-4-4-4-12 hex digits)"),
        (["--run-id", f"{{{RUN}}}"], {}, "is not an OpenLineage run id"),
        (["--run-id", ""], {}, "--run-id '' is not an OpenLineage run id"),
        (
            ["--run-id", f"airflow/dag.train/{RUN}"],
            {},
            "looks like OPENLINEAGE_PARENT_ID's namespace/job/runId: pass the runId alone",
        ),
        ([], {"REGISTRY_RUN_ID": "42"}, "$REGISTRY_RUN_ID '42' is not an OpenLineage run id"),
    ],
    ids=["word", "bare-hex", "braces", "empty", "parent-id", "env"],
)
def test_a_run_id_that_is_not_a_uuid_exits_2_before_any_request(dead_url, model_file, options, env, message):
    result = register(dead_url, "t0ken", model_file, *options, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stdout == ""


def test_help_names_the_option_and_its_variable():
    result = run("register", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--run-id UUID" in text and "(default: $REGISTRY_RUN_ID)" in text
