"""Lineage test helpers: OpenLineage event bodies, registered model versions."""

import hashlib
import uuid

import pytest

from registry import services as registry_services

PRODUCER = "https://github.com/example/pipelines/trainer"


def ol_dataset(namespace: str, name: str, *, version: str | None = None, schema=None, uri=None, **extra) -> dict:
    facets = {}
    if version is not None:
        facets["version"] = {
            "_producer": PRODUCER,
            "_schemaURL": "https://x/DatasetVersion.json",
            "datasetVersion": version,
        }
    if schema is not None:
        facets["schema"] = {
            "_producer": PRODUCER,
            "_schemaURL": "https://x/Schema.json",
            "fields": [{"name": n, "type": t} for n, t in schema],
        }
    if uri is not None:
        facets["dataSource"] = {"_producer": PRODUCER, "_schemaURL": "https://x/DS.json", "name": namespace, "uri": uri}
    return {"namespace": namespace, "name": name, "facets": facets, **extra}


def run_event(
    event_type: str,
    run_id,
    job: tuple[str, str],
    *,
    inputs=(),
    outputs=(),
    time: str = "2026-01-01T00:00:00Z",
    commit: str | None = None,
    job_type: str | None = None,
) -> dict:
    job_facets = {}
    if commit:
        job_facets["sourceCodeLocation"] = {
            "_producer": PRODUCER,
            "_schemaURL": "https://openlineage.io/spec/facets/1-0-0/SourceCodeLocationJobFacet.json",
            "type": "git",
            "url": "https://github.com/acme/train/blob/" + commit + "/train.py",
            "repoUrl": "https://github.com/acme/train.git",
            "path": "train.py",
            "version": commit,
            "branch": "main",
        }
    if job_type:
        job_facets["jobType"] = {
            "_producer": PRODUCER,
            "_schemaURL": "https://x/JobType.json",
            "processingType": "BATCH",
            "integration": "PYTORCH",
            "jobType": job_type,
        }
    return {
        "eventType": event_type,
        "eventTime": time,
        "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": str(run_id), "facets": {}},
        "job": {"namespace": job[0], "name": job[1], "facets": job_facets},
        "inputs": list(inputs),
        "outputs": list(outputs),
    }


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def make_version(personas):
    """make_version(model_name, run_id=None, actor=owner) -> a registered ModelVersion (files on s3)."""
    models = {}

    def make(name: str = "churn", *, run_id=None, actor=None, namespace: str = "acme", content: bytes | None = None):
        actor = actor or personas["owner"].user
        key = (namespace, name)
        if key not in models:
            models[key] = registry_services.model_create(actor=actor, namespace=namespace, name=name)
        body = content or uuid.uuid4().bytes
        manifest = {"files": [{"path": "model.bin", "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}]}
        version, _ = registry_services.version_register(
            actor=actor,
            model=models[key],
            content=registry_services.VersionContent(
                manifest=manifest,
                artifact_uri=f"s3://bucket/{namespace}/{name}",
                source={"repository": "https://github.com/acme/train.git", "commit": "c0ffee"},
                run_id=run_id,
            ),
        )
        return version

    return make


RAW = digest_of("raw events, January")
BASE_CARD = {"model_details": "Gradient-boosted trees for churn.", "training_data": "Features from raw/events."}


def post_event(client, body: dict) -> dict:
    response = client.post("/api/v1/lineage", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


@pytest.fixture
def scenario(personas, make_version):
    """A seeded pipeline, sent as OpenLineage events (data jobs by the ci_bot; training and
    evaluation by the owner, who may view and register the models they name):

    s3://lake:raw/events#<RAW> --(etl:ingest run A)--> (produced)
    raw/events --(pipelines:featurize run B, commit abc123)--> s3://lake:features#run:B
    features + model acme/base:1 --(pipelines:train run C, commit def456)--> model acme/churn:1 (run_id=C)
    model acme/churn:1 + s3://lake:holdout --(pipelines:evaluate run D)--> s3://lake:eval/report
    """
    from registry import services as registry_services

    ci = personas["ci_bot"].client()
    owner = personas["owner"].client()
    ids = {k: uuid.uuid4() for k in "ABCD"}
    base = make_version("base")
    raw = ol_dataset("s3://lake", "raw/events", version=RAW, uri="s3://lake/raw/events", schema=[("user", "BIGINT")])
    post_event(ci, run_event("START", ids["A"], ("etl", "ingest"), time="2026-01-01T00:00:00Z"))
    post_event(ci, run_event("COMPLETE", ids["A"], ("etl", "ingest"), outputs=[raw], time="2026-01-01T00:10:00Z"))
    features = ol_dataset("s3://lake", "features", schema=[("user", "BIGINT"), ("clicks_7d", "INT")])
    features["outputFacets"] = {
        "outputStatistics": {"_producer": PRODUCER, "_schemaURL": "https://x/OS.json", "rowCount": 5000}
    }
    post_event(
        ci,
        run_event(
            "COMPLETE",
            ids["B"],
            ("pipelines", "featurize"),
            inputs=[ol_dataset("s3://lake", "raw/events")],
            outputs=[features],
            commit="abc123",
            time="2026-01-02T00:00:00Z",
        ),
    )
    train = run_event(
        "START",
        ids["C"],
        ("pipelines", "train"),
        inputs=[ol_dataset("s3://lake", "features"), ol_dataset("registry", "acme/base:1")],
        commit="def456",
        job_type="TRAINING",
        time="2026-01-03T00:00:00Z",
    )
    train["run"]["facets"] = {
        "executionParameters": {
            "_producer": PRODUCER,
            "_schemaURL": "https://openlineage.io/spec/facets/1-0-0/ExecutionParametersRunFacet.json",
            "parameters": [{"key": "lr", "value": "0.1"}, {"key": "epochs", "value": "20"}],
        },
        "environmentVariables": {
            "_producer": PRODUCER,
            "_schemaURL": "https://x/Env.json",
            "environmentVariables": [
                {"name": "CUDA_VISIBLE_DEVICES", "value": "0"},
                {"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"},
            ],
        },
    }
    post_event(owner, train)
    complete = run_event("COMPLETE", ids["C"], ("pipelines", "train"), commit="def456", time="2026-01-03T02:00:00Z")
    post_event(owner, complete)
    churn = make_version("churn", run_id=ids["C"])
    card, _ = registry_services.card_revision_add(actor=personas["owner"].user, version=churn, content=BASE_CARD)
    post_event(
        owner,
        run_event(
            "COMPLETE",
            ids["D"],
            ("pipelines", "evaluate"),
            inputs=[ol_dataset("registry", "acme/churn:1"), ol_dataset("s3://lake", "holdout", version="2026-01")],
            outputs=[ol_dataset("s3://lake", "eval/report")],
            time="2026-01-04T00:00:00Z",
        ),
    )
    return {"runs": ids, "base": base, "churn": churn, "card": card}
