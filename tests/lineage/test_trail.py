"""The lineage trail of a model version, checked field by field for the seeded scenario."""

import hashlib
import json
import uuid

import pytest
from django.utils import timezone

from audit import chain
from audit.models import AuditEvent
from lineage import trail as trails
from lineage.models import LineageEvent
from tests.conftest import bearer
from tests.lineage.conftest import BASE_CARD, PRODUCER, RAW, digest_of, ol_dataset, post_event, run_event

pytestmark = pytest.mark.django_db

TRAIL = "/api/v1/lineage/trail"


def get_trail(client, node_id="model:acme/churn:1", **params) -> dict:
    response = client.get(TRAIL, {"nodeId": node_id, **params})
    assert response.status_code == 200, response.content
    return response.json()


def test_trail_of_a_model_version_field_by_field(personas, scenario):
    runs = {k: str(v) for k, v in scenario["runs"].items()}
    churn, base, card = scenario["churn"], scenario["base"], scenario["card"]
    body = get_trail(personas["owner"].client())
    t = body["trail"]

    assert t["format"] == "model-governance-registry/lineage-trail/1"
    assert t["subject"] == {"id": "model:acme/churn:1", "type": "model"}
    assert t["as_of"] is None
    assert t["truncated"] is False
    assert t["model"] == {"namespace": "acme", "name": "churn"}
    assert t["version"] == {
        "id": "model:acme/churn:1",
        "number": 1,
        "digest": churn.digest,
        "artifact_uri": "s3://bucket/acme/churn",
        "status": "registered",
        "source": {"repository": "https://github.com/acme/train.git", "commit": "c0ffee"},
        "run_id": runs["C"],
        "created_at": churn.created_at.isoformat().replace("+00:00", "Z"),
        "created_by": "owner",
        "signatures": [],
    }
    assert t["produced_by"] == [f"run:{runs['C']}"]
    assert t["run_links"] == [
        {
            "run_id": runs["C"],
            "linked": True,
            "source": "registration",
            "recorded_at": t["version"]["created_at"],
            "recorded_by": "owner",
            "reason": "",
        }
    ]

    # Runs in the order they happened; the producing run last.
    ingest, featurize, train = t["runs"]
    assert train == {
        "id": f"run:{runs['C']}",
        "run_id": runs["C"],
        "job": "job:pipelines:train",
        "kind": "training",
        "state": "COMPLETE",
        "started_at": "2026-01-03T00:00:00Z",
        "ended_at": "2026-01-03T02:00:00Z",
        "code": {
            "type": "git",
            "url": "https://github.com/acme/train/blob/def456/train.py",
            "repoUrl": "https://github.com/acme/train.git",
            "path": "train.py",
            "commit": "def456",
            "branch": "main",
            "tag": None,
        },
        "params": {"lr": "0.1", "epochs": "20"},
        "environment": {
            "processingEngine": None,
            "variables": {"CUDA_VISIBLE_DEVICES": "0", "AWS_SECRET_ACCESS_KEY": "[redacted]"},
        },
        "inputs": [f"dataset:s3://lake:features#run:{runs['B']}", "model:acme/base:1"],
        "outputs": ["model:acme/churn:1"],
        "events": [
            {
                "event_type": "START",
                "event_time": "2026-01-03T00:00:00Z",
                "producer": PRODUCER,
                "recorded_at": train["events"][0]["recorded_at"],
                "recorded_by": "owner",
            },
            {
                "event_type": "COMPLETE",
                "event_time": "2026-01-03T02:00:00Z",
                "producer": PRODUCER,
                "recorded_at": train["events"][1]["recorded_at"],
                "recorded_by": "owner",
            },
        ],
    }
    assert (featurize["id"], featurize["job"], featurize["kind"], featurize["state"]) == (
        f"run:{runs['B']}",
        "job:pipelines:featurize",
        "other",
        "COMPLETE",
    )
    assert featurize["code"]["commit"] == "abc123"
    assert (featurize["started_at"], featurize["ended_at"]) == (None, "2026-01-02T00:00:00Z")
    assert featurize["inputs"] == [f"dataset:s3://lake:raw/events#{RAW}"]
    assert featurize["outputs"] == [f"dataset:s3://lake:features#run:{runs['B']}"]
    assert [e["recorded_by"] for e in featurize["events"]] == ["ci_bot"]
    assert (ingest["id"], ingest["code"], ingest["inputs"]) == (f"run:{runs['A']}", None, [])
    assert ingest["outputs"] == [f"dataset:s3://lake:raw/events#{RAW}"]
    assert (ingest["started_at"], ingest["ended_at"]) == ("2026-01-01T00:00:00Z", "2026-01-01T00:10:00Z")

    features, raw = t["datasets"]
    assert features == {
        "id": f"dataset:s3://lake:features#run:{runs['B']}",
        "namespace": "s3://lake",
        "name": "features",
        "version": f"run:{runs['B']}",
        "digest": None,
        "uri": None,
        "schema": [{"name": "user", "type": "BIGINT"}, {"name": "clicks_7d", "type": "INT"}],
        "row_count": 5000,
        "created_at": "2026-01-02T00:00:00Z",
        "recorded_at": features["recorded_at"],
        "produced_by": [f"run:{runs['B']}"],
        "depth": 2,
    }
    assert raw == {
        "id": f"dataset:s3://lake:raw/events#{RAW}",
        "namespace": "s3://lake",
        "name": "raw/events",
        "version": RAW,
        "digest": RAW,
        "uri": "s3://lake/raw/events",
        "schema": [{"name": "user", "type": "BIGINT"}],
        "row_count": None,
        "created_at": "2026-01-01T00:10:00Z",
        "recorded_at": raw["recorded_at"],
        "produced_by": [f"run:{runs['A']}"],
        "depth": 4,
    }
    assert t["base_models"] == ["model:acme/base:1"]
    assert t["card_revisions"] == [
        {
            "revision": 1,
            "schema_version": card.schema_version,
            "content_sha256": hashlib.sha256(chain.canonical_json(card.content)).hexdigest(),
            "created_at": card.created_at.isoformat().replace("+00:00", "Z"),
            "created_by": "owner",
        }
    ]
    assert card.content["model_details"] == BASE_CARD["model_details"]
    # governance's sections: never requested for promotion, never released
    assert t["sections"] == {"promotions": {"requests": [], "policies": [], "checks": []}, "releases": []}

    # The audit events that recorded those facts: the two versions, the card, and the lineage events
    # of runs A, B and C (not of the downstream evaluation D).
    events = t["audit"]["events"]
    upstream_events = LineageEvent.objects.filter(run__run_uuid__in=[runs["A"], runs["B"], runs["C"]])
    expected = AuditEvent.objects.filter(
        subject_type="lineage.lineageevent", subject_id__in=[str(e.pk) for e in upstream_events]
    ) | AuditEvent.objects.filter(subject_type="registry.modelversion", subject_id__in=[str(churn.pk), str(base.pk)])
    expected = expected | AuditEvent.objects.filter(subject_type="registry.modelcardrevision", subject_id=str(card.pk))
    assert [(e["seq"], e["hash"]) for e in events] == list(expected.order_by("seq").values_list("seq", "hash"))
    assert [e["action"] for e in events].count("lineage.event_ingested") == 5
    assert {e["action"] for e in events} == {"lineage.event_ingested", "version.registered", "card.revised"}
    assert (t["audit"]["first_seq"], t["audit"]["last_seq"]) == (events[0]["seq"], events[-1]["seq"])
    head = AuditEvent.objects.exclude(action="lineage.trail_issued").order_by("-seq").first()
    assert t["audit"]["chain_head"] == {"seq": head.seq, "hash": head.hash}

    # The trail states its own sha256: that of its canonical JSON.
    assert body["sha256"] == hashlib.sha256(chain.canonical_json(t)).hexdigest()
    # and the audit chain records that the registry issued it: an altered copy's sha256 is found nowhere there
    issued = AuditEvent.objects.get(action="lineage.trail_issued")
    assert json.loads(issued.after)["sha256"] == body["sha256"] and issued.seq == head.seq + 1
    assert issued.subject_id == "model:acme/churn:1" and issued.actor_username == "owner"


def test_trail_events_check_against_the_verified_audit_chain(personas, scenario):
    t = get_trail(personas["auditor"].client())["trail"]
    response = personas["auditor"].client().get("/api/v1/audit/events", {"format": "ndjson"})
    exported = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    chain.verify_events(exported)  # raises if the chain is broken
    by_seq = {e["seq"]: e for e in exported}
    for event in t["audit"]["events"]:
        assert by_seq[event["seq"]]["hash"] == event["hash"]
        assert by_seq[event["seq"]]["action"] == event["action"]


def test_trail_as_of_and_html(personas, scenario):
    before_card = scenario["card"].created_at - timezone.timedelta(microseconds=1)
    t = get_trail(personas["owner"].client(), as_of=before_card.isoformat())["trail"]
    assert t["card_revisions"] == []
    assert t["as_of"] == before_card.isoformat().replace("+00:00", "Z")
    assert "card.revised" not in {e["action"] for e in t["audit"]["events"]}

    response = personas["owner"].client().get(TRAIL, {"nodeId": "model:acme/churn:1", "format": "html"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    html = response.content.decode()
    assert response["X-Trail-SHA256"] in html
    assert "def456" in html and RAW in html and "Lineage trail of model:acme/churn:1" in html


def test_trail_access(personas, scenario, make_token):
    assert personas["outsider"].client().get(TRAIL, {"nodeId": "model:acme/churn:1"}).status_code == 404
    assert personas["reviewer"].client().get(TRAIL, {"nodeId": "model:acme/churn:1"}).status_code == 200
    read_only = bearer(make_token(personas["owner"].user, ["read"]))
    response = read_only.get(TRAIL, {"nodeId": "model:acme/churn:1"})
    assert (response.status_code, response.json()["error"]["code"]) == (403, "insufficient_scope")
    response = personas["owner"].client().get(TRAIL, {"nodeId": "dataset:s3://lake:features"})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "unsupported_node")


def test_trail_includes_signature_verdicts_and_sections_other_apps_add(personas, scenario, monkeypatch):
    from registry.models import VersionSignature

    churn, base = scenario["churn"], scenario["base"]
    VersionSignature.objects.create(
        version=churn,
        bundle={},
        bundle_sha256="b" * 64,
        verified=True,
        reason="signature verifies with a trusted key; 1 file matches the manifest",
        key_id="k" * 64,
        files_checked=1,
        problems={"mismatched": [], "missing": [], "extra": []},
        verified_at=timezone.now(),
        created_by=personas["owner"].user,
    )

    def promotions(context):
        assert context.version == churn and context.node_id == "model:acme/churn:1"
        return trails.Section(data={"releases": []}, audit_subjects=[("registry.modelversion", str(base.pk))])

    monkeypatch.setitem(trails._SECTIONS, "promotions", promotions)
    t = get_trail(personas["owner"].client())["trail"]
    (signature,) = t["version"]["signatures"]
    assert (signature["verified"], signature["key_id"], signature["files_checked"], signature["created_by"]) == (
        True,
        "k" * 64,
        1,
        "owner",
    )
    # the builder replaced governance's "promotions"; governance's "releases" (none here) is still there
    assert t["sections"] == {"promotions": {"releases": []}, "releases": []}


def test_a_trail_as_of_a_facts_own_time_holds_the_event_that_recorded_it(personas, scenario):
    """Facts are stamped a little before the audit event that records them (it waits for the chain head and
    takes the database's clock). Read as of the card revision's own time, the trail listed the revision but
    not its event: an auditor could not match the fact against the chain."""
    card = scenario["card"]
    t = get_trail(personas["owner"].client(), as_of=card.created_at.isoformat())["trail"]
    assert [c["revision"] for c in t["card_revisions"]] == [card.revision]
    recorded = [e for e in t["audit"]["events"] if e["subject_type"] == "registry.modelcardrevision"]
    assert [(e["action"], e["subject_id"]) for e in recorded] == [("card.revised", str(card.pk))]


def audit_event_of(lineage_event: LineageEvent) -> AuditEvent:
    return AuditEvent.objects.get(action="lineage.event_ingested", subject_id=str(lineage_event.pk))


def listed(trail: dict) -> set[int]:
    return {e["seq"] for e in trail["audit"]["events"]}


def test_a_run_link_an_openlineage_event_made_keeps_its_event_after_an_unlink(personas, make_version):
    """The link fact stays in run_links once unlinked, but the walk no longer reaches its run: the event that made
    the link (it has no audit event of its own) must still be in the trail's audit range."""
    client = personas["owner"].client()
    make_version("churn")
    run = uuid.uuid4()
    post_event(
        client, run_event("COMPLETE", run, ("pipelines", "train"), outputs=[ol_dataset("registry", "acme/churn:1")])
    )
    unlink = {"nodeId": "model:acme/churn:1", "runId": str(run), "linked": False, "reason": "wrong run"}
    assert client.post("/api/v1/lineage/links", unlink, format="json").status_code == 201
    t = get_trail(client)["trail"]
    assert [(x["source"], x["linked"]) for x in t["run_links"]] == [("openlineage", True), ("link", False)]
    assert audit_event_of(LineageEvent.objects.get(run__run_uuid=run)).seq in listed(t)


def test_a_dataset_fact_another_run_stated_is_listed_with_its_event(personas, make_version):
    """A consumer elsewhere in the graph states the schema and URI of a dataset version the trail shows: the trail
    shows them, so its audit range lists the event that recorded them."""
    ci, owner = personas["ci_bot"].client(), personas["owner"].client()
    features = ol_dataset("s3://lake", "features", version=digest_of("features v1"))
    make, train, report = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    post_event(ci, run_event("COMPLETE", make, ("etl", "make"), outputs=[features]))
    post_event(owner, run_event("COMPLETE", train, ("pipelines", "train"), inputs=[features]))
    make_version("churn", run_id=train)
    stated = ol_dataset(
        "s3://lake", "features", version=digest_of("features v1"), schema=[("ssn", "TEXT")], uri="s3://lake/elsewhere"
    )
    post_event(ci, run_event("COMPLETE", report, ("reports", "weekly"), inputs=[stated]))
    t = get_trail(owner)["trail"]
    (shown,) = [d for d in t["datasets"] if d["name"] == "features"]
    assert shown["schema"] == [{"name": "ssn", "type": "TEXT"}] and shown["uri"] == "s3://lake/elsewhere"
    assert audit_event_of(LineageEvent.objects.get(run__run_uuid=report)).seq in listed(t)
