"""The real openlineage-python client's HTTP transport against the running server.

The client sends `Authorization: Bearer <api_key>` (ApiKeyTokenProvider) and POSTs each event to
urljoin(url, endpoint); a 4xx raises requests.HTTPError from emit().
"""

import uuid
from datetime import UTC, datetime

import pytest
import requests
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import (
    DatasetEvent,
    InputDataset,
    Job,
    JobEvent,
    OutputDataset,
    Run,
    RunEvent,
    RunState,
    StaticDataset,
)
from openlineage.client.facet_v2 import (
    dataset_version_dataset,
    datasource_dataset,
    job_type_job,
    output_statistics_output_dataset,
    schema_dataset,
    source_code_location_job,
)
from openlineage.client.transport.http import ApiKeyTokenProvider, HttpCompression, HttpConfig, HttpTransport
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from audit.models import AuditEvent
from lineage.models import Dataset, DatasetVersion, Edge, Facet, LineageEvent
from lineage.models import Job as JobRow
from lineage.models import Run as RunRow

live = pytest.mark.django_db(transaction=True)  # the live server thread must see committed rows

COMMIT = "9fceb02d0ae598e95dc970b74767f19372d61af8"
RAW_DIGEST = "sha256:" + "a" * 64
PRODUCER = "https://github.com/acme/pipelines/train.py"


@pytest.fixture
def client_for():
    """client_for(url, token, **HttpConfig) -> OpenLineageClient, its connections closed at teardown.

    urllib3 2.x does not close pooled sockets when a requests Session closes (they close when
    garbage-collected). A 4xx response kept alive by pytest's HTTPError would keep its socket, and
    so a live-server thread and its database session, open past the test database's teardown; the
    fixture closes the adapter's pools explicitly.
    """
    made = []

    def make(url: str, token: str, **config) -> OpenLineageClient:
        adapter = HTTPAdapter(max_retries=Retry(total=0))  # a 4xx is an answer, not something to retry
        transport = HttpTransport(
            HttpConfig(
                url=url,
                endpoint="api/v1/lineage",
                auth=ApiKeyTokenProvider({"api_key": token}),
                adapter=adapter,
                **config,
            )
        )
        made.append((OpenLineageClient(transport=transport), adapter))
        return made[-1][0]

    yield make
    for client, adapter in made:
        pools = adapter.poolmanager.pools
        for key in pools.keys():  # noqa: SIM118 - RecentlyUsedContainer refuses iteration
            pools[key].close()
        client.close()


def now() -> str:
    return "2026-03-01T10:00:00+00:00"


def inputs():
    return [
        InputDataset(
            namespace="s3://lake",
            name="raw/clicks",
            facets={
                "schema": schema_dataset.SchemaDatasetFacet(
                    fields=[
                        schema_dataset.SchemaDatasetFacetFields(name="user_id", type="BIGINT"),
                        schema_dataset.SchemaDatasetFacetFields(name="clicked", type="BOOLEAN"),
                    ]
                ),
                "dataSource": datasource_dataset.DatasourceDatasetFacet(name="lake", uri="s3://lake"),
                "version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=RAW_DIGEST),
            },
        )
    ]


def outputs():
    return [
        OutputDataset(
            namespace="s3://lake",
            name="features/clicks",
            outputFacets={
                "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=1200)
            },
        )
    ]


def job():
    return Job(
        namespace="pipelines",
        name="clicks.featurize",
        facets={
            "sourceCodeLocation": source_code_location_job.SourceCodeLocationJobFacet(
                type="git",
                url=f"https://github.com/acme/pipelines/blob/{COMMIT}/featurize.py",
                repoUrl="https://github.com/acme/pipelines.git",
                path="featurize.py",
                version=COMMIT,
            ),
            "jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="SPARK", jobType="JOB"),
        },
    )


@pytest.fixture
def writer_token(personas, make_token):
    return make_token(personas["ci_bot"].user, ["lineage:write"])


@pytest.fixture
def reader(personas, make_token, live_server):
    token = make_token(personas["owner"].user, ["read"])

    def get(path: str, **params):
        response = requests.get(
            f"{live_server.url}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        return response

    return get


@live
def test_run_events_sent_by_the_client_appear_in_graph_queries(
    live_server, client_for, personas, writer_token, reader, make_version
):
    client = client_for(live_server.url, writer_token)
    run_id = str(uuid.uuid4())
    client.emit(RunEvent(eventType=RunState.START, eventTime=now(), run=Run(runId=run_id), job=job(), inputs=inputs()))
    client.emit(
        RunEvent(
            eventType=RunState.COMPLETE,
            eventTime="2026-03-01T10:05:00+00:00",
            run=Run(runId=run_id),
            job=job(),
            inputs=inputs(),
            outputs=outputs(),
        )
    )
    # A model version registered with that run_id is downstream of the run's job and inputs.
    make_version("clicks", run_id=uuid.UUID(run_id))

    graph = reader("/api/v1/lineage/graph", nodeId="dataset:s3://lake:raw/clicks", direction="downstream").json()
    ids = {n["id"]: n for n in graph["nodes"]}
    assert set(ids) == {
        "dataset:s3://lake:raw/clicks",
        "job:pipelines:clicks.featurize",
        "dataset:s3://lake:features/clicks",
        "model:acme/clicks:1",
    }
    assert ids["job:pipelines:clicks.featurize"]["runs"] == [{"runId": run_id, "state": "COMPLETE"}]
    assert ids["dataset:s3://lake:raw/clicks"]["versions"] == [{"version": RAW_DIGEST, "digest": RAW_DIGEST}]
    assert {(e["source"], e["target"], e["kind"]) for e in graph["edges"]} == {
        ("dataset:s3://lake:raw/clicks", "job:pipelines:clicks.featurize", "input"),
        ("job:pipelines:clicks.featurize", "dataset:s3://lake:features/clicks", "output"),
        ("job:pipelines:clicks.featurize", "model:acme/clicks:1", "output"),
    }
    assert graph["truncated"] is False

    up = reader("/api/v1/lineage/graph", nodeId="model:acme/clicks:1", direction="upstream").json()
    assert [n["id"] for n in up["nodes"]] == [
        "model:acme/clicks:1",
        "job:pipelines:clicks.featurize",
        "dataset:s3://lake:raw/clicks",
    ]

    # What the server recorded: who sent it (the token's user), the facets, one audit event per event.
    events = list(LineageEvent.objects.order_by("id"))
    assert [(e.event_type, e.recorded_by.username) for e in events] == [("START", "ci_bot"), ("COMPLETE", "ci_bot")]
    assert events[0].producer.startswith("https://github.com/OpenLineage/OpenLineage/")
    assert AuditEvent.objects.filter(action="lineage.event_ingested").count() == 2
    trail = requests.get(
        f"{live_server.url}/api/v1/lineage/trail",
        params={"nodeId": "model:acme/clicks:1"},
        headers={"Authorization": f"Bearer {personas['owner'].token}"},
        timeout=10,
    ).json()["trail"]
    (run,) = trail["runs"]
    assert run["code"]["commit"] == COMMIT
    assert run["code"]["repoUrl"] == "https://github.com/acme/pipelines.git"
    times = ("COMPLETE", "2026-03-01T10:00:00Z", "2026-03-01T10:05:00Z")
    assert (run["state"], run["started_at"], run["ended_at"]) == times
    stats = Facet.objects.get(name="outputStatistics")
    assert (stats.role, stats.value["rowCount"], stats.run.run_uuid) == (2, 1200, uuid.UUID(run_id))
    raw = next(d for d in trail["datasets"] if d["name"] == "raw/clicks")
    assert raw["digest"] == RAW_DIGEST
    assert raw["uri"] == "s3://lake"
    assert [(f["name"], f["type"]) for f in raw["schema"]] == [("user_id", "BIGINT"), ("clicked", "BOOLEAN")]


@live
def test_dataset_and_job_events_from_the_client(live_server, client_for, writer_token, reader):
    client = client_for(live_server.url, writer_token, compression=HttpCompression.GZIP)
    client.emit(
        DatasetEvent(
            eventTime=now(),
            dataset=StaticDataset(
                namespace="postgres://warehouse:5432",
                name="analytics.public.customers",
                facets={"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion="snapshot-42")},
            ),
        )
    )
    client.emit(
        JobEvent(
            eventTime=now(),
            job=Job(namespace="dbt", name="analytics.customers_daily"),
            inputs=[InputDataset(namespace="postgres://warehouse:5432", name="analytics.public.customers")],
            outputs=[OutputDataset(namespace="postgres://warehouse:5432", name="analytics.public.customers_daily")],
        )
    )
    assert DatasetVersion.objects.get(dataset__name="analytics.public.customers").version == "snapshot-42"
    graph = reader(
        "/api/v1/lineage/graph", nodeId="dataset:postgres://warehouse:5432:analytics.public.customers", direction="both"
    ).json()
    assert {(e["source"], e["target"]) for e in graph["edges"]} == {
        ("dataset:postgres://warehouse:5432:analytics.public.customers", "job:dbt:analytics.customers_daily"),
        ("job:dbt:analytics.customers_daily", "dataset:postgres://warehouse:5432:analytics.public.customers_daily"),
    }
    assert LineageEvent.objects.filter(kind="JobEvent").count() == 1


@live
def test_an_event_as_the_client_docs_build_it_is_recorded(live_server, client_for, writer_token):
    """openlineage.io's Python client page and OpenLineage's Great Expectations action send
    datetime.now().isoformat(), a time without an offset, which the client's own check lets through: read as UTC."""
    client = client_for(live_server.url + "/", writer_token)
    event = RunEvent(
        eventType=RunState.COMPLETE,
        eventTime=datetime(2026, 3, 1, 9, 30, 15, 250_000).isoformat(),
        run=Run(runId=str(uuid.uuid4())),
        job=Job(namespace="pipelines", name="validate"),
        producer="https://github.com/OpenLineage/OpenLineage/tree/1.0.0/integration/common",
    )
    client.emit(event)  # raises requests.HTTPError on a 400
    stored = LineageEvent.objects.get(run__run_uuid=event.run.runId)
    assert stored.event_time == datetime(2026, 3, 1, 9, 30, 15, 250_000, tzinfo=UTC)


def _counts():
    return {
        m.__name__: m.objects.count()
        for m in (Dataset, DatasetVersion, JobRow, RunRow, Edge, Facet, LineageEvent, AuditEvent)
    }


@live
def test_invalid_events_are_rejected_with_400_and_nothing_is_stored(live_server, client_for, writer_token):
    client = client_for(live_server.url, writer_token)
    before = _counts()
    # The first output is fine; the second names no dataset. Nothing of the event may be stored.
    bad_outputs = [*outputs(), OutputDataset(namespace="s3://lake", name="")]
    with pytest.raises(requests.HTTPError) as raised:
        client.emit(
            RunEvent(
                eventType=RunState.COMPLETE,
                eventTime=now(),
                run=Run(runId=str(uuid.uuid4())),
                job=job(),
                inputs=inputs(),
                outputs=bad_outputs,
            )
        )
    response = raised.value.response
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_event"
    assert "outputs[1].name" in response.json()["error"]["message"]
    assert response.json()["error"]["detail"] == {"outputs[1].name": ["must not be empty."]}

    # Valid for the client, refused by the registry: a model version output that does not exist.
    with pytest.raises(requests.HTTPError) as raised:
        client.emit(
            RunEvent(
                eventType=RunState.COMPLETE,
                eventTime=now(),
                run=Run(runId=str(uuid.uuid4())),
                job=job(),
                inputs=inputs(),
                outputs=[OutputDataset(namespace="registry", name="acme/missing:1")],
            )
        )
    assert raised.value.response.status_code == 400
    assert "outputs[0].name" in raised.value.response.json()["error"]["message"]
    assert _counts() == before


@live
def test_a_token_without_lineage_write_is_refused(live_server, client_for, personas, make_token):
    client = client_for(live_server.url, make_token(personas["ci_bot"].user, ["read"]))
    with pytest.raises(requests.HTTPError) as raised:
        client.emit(RunEvent(eventType=RunState.START, eventTime=now(), run=Run(runId=str(uuid.uuid4())), job=job()))
    assert raised.value.response.status_code == 403
    assert raised.value.response.json()["error"]["code"] == "insufficient_scope"
    assert LineageEvent.objects.count() == 0
