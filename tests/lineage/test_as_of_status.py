"""A model version's status as of a past time, in every reader that takes `as_of`: graph, page, exports, trail.

The version row holds only today's status; its changes are `version.updated` audit events, which the walk
replays in its one statement.
"""

import csv
import io
import time
from urllib.parse import unquote

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prov.model import ProvDocument, ProvEntity

from lineage import graph as graphs
from lineage import nodes
from registry import services as registry_services
from tests.lineage.test_page import PAGE, boxes, login, svg_of

pytestmark = pytest.mark.django_db

CHURN, BASE = "model:acme/churn:1", "model:acme/base:1"


def moment():
    """A time strictly between the change before and the change after (audit times are the database's clock)."""
    time.sleep(0.01)
    now = timezone.now()
    time.sleep(0.01)
    return now


@pytest.fixture
def history(personas, scenario):
    """churn: registered -(tags only)-> deprecated -> registered -> archived; base: registered -> deprecated."""
    owner = personas["owner"].user
    churn, base = scenario["churn"], scenario["base"]

    def update(version, **change):
        registry_services.version_update(actor=owner, version=version, **change)

    times = {"t0": moment()}
    update(churn, tags={"stage": "candidate"})  # a version.updated event without a status change
    update(churn, status="deprecated")
    times["t1"] = moment()
    update(base, status="deprecated")
    update(churn, status="registered")
    times["t2"] = moment()
    update(churn, status="archived")
    times["t3"] = moment()
    return times


# (as of, churn's status, base's status); None: without as_of
EXPECTED = [
    ("t0", "registered", "registered"),
    ("t1", "deprecated", "registered"),
    ("t2", "registered", "deprecated"),
    ("t3", "archived", "deprecated"),
    (None, "archived", "deprecated"),
]


def params(history, at) -> dict:
    return {"as_of": history[at].isoformat()} if at else {}


def test_graph_and_page_show_the_status_as_of(personas, history):
    owner = personas["owner"]
    for at, churn, base in EXPECTED:
        body = owner.client().get("/api/v1/lineage/graph", {"nodeId": CHURN, **params(history, at)}).json()
        status = {n["id"]: n["status"] for n in body["nodes"] if n["type"] == "model"}
        assert status == {CHURN: churn, BASE: base}, at
        html = login(owner.user).get(PAGE, {"nodeId": CHURN, **params(history, at)}).content.decode()
        found = boxes(svg_of(html))
        assert (found[CHURN]["texts"][-1], found[BASE]["texts"][-1]) == (churn, base), at


def test_exports_show_the_status_as_of(personas, history):
    client = personas["owner"].client()

    def export(fmt, at) -> str:
        query = {"nodeId": CHURN, "format": fmt, **params(history, at)}
        response = client.get("/api/v1/lineage/export", query)
        assert response.status_code == 200
        return b"".join(response.streaming_content).decode()

    for at, churn, base in EXPECTED:
        rows = [r for r in csv.DictReader(io.StringIO(export("csv", at))) if r["type"] == "model"]
        assert {r["id"]: r["state"] for r in rows} == {CHURN: churn, BASE: base}, at
        doc = ProvDocument.deserialize(content=export("prov-json", at), format="json")
        status = {
            unquote(e.identifier.localpart): next(v for k, v in e.attributes if k.localpart == "status")
            for e in doc.get_records(ProvEntity)
            if unquote(e.identifier.localpart).startswith("model:")
        }
        assert status == {CHURN: churn, BASE: base}, at


def test_trail_shows_the_status_as_of(personas, scenario, history):
    client = personas["owner"].client()
    for at, churn, _ in EXPECTED:
        trail = client.get("/api/v1/lineage/trail", {"nodeId": CHURN, **params(history, at)}).json()["trail"]
        assert trail["version"]["status"] == churn, at
        # the changes behind that status are audit events the trail lists
        updates = [
            e
            for e in trail["audit"]["events"]
            if e["action"] == "version.updated" and e["subject_id"] == str(scenario["churn"].pk)
        ]
        assert len(updates) == {"t0": 0, "t1": 2, "t2": 3}.get(at, 4), at


def test_the_status_as_of_costs_no_extra_query(personas, history):
    """The status is part of the traversal statement, however many model versions and status changes."""
    user = personas["owner"].user
    start = nodes.resolve(CHURN, user)
    seen = graphs.visibility(user)
    with CaptureQueriesContext(connection) as queries:
        result = graphs.walk(user=user, start=start, direction="both", as_of=history["t1"], seen=seen)
    assert len(queries.captured_queries) == 1
    models = {key[1]: row["state"] for key, row in result.nodes.items() if key[0] == graphs.T_MODEL}
    assert sorted(models.values()) == ["deprecated", "registered"]


def test_an_as_of_with_another_offset_is_the_same_instant_on_sqlite(sqlite_shell):
    """SQLite compares times as text: an as_of written as +02:00 read the status of two hours later."""
    script = (
        "import time\n"
        "from datetime import timedelta, timezone as tz\n"
        "from django.contrib.auth.models import User\n"
        "from django.utils import timezone\n"
        "from lineage import graph, nodes\n"
        "from registry import services\n"
        "from tests.registry.helpers import s3_manifest\n"
        "owner = User.objects.create_user('own')\n"
        "model = services.model_create(actor=owner, namespace='acme', name='churn')\n"
        "content = services.VersionContent(manifest=s3_manifest(b'x'), artifact_uri='s3://b/x')\n"
        "version, _ = services.version_register(actor=owner, model=model, content=content)\n"
        "time.sleep(0.05)\n"
        "t0 = timezone.now()\n"
        "time.sleep(0.05)\n"
        "services.version_update(actor=owner, version=version, status='deprecated')\n"
        "for as_of in (t0, t0.astimezone(tz(timedelta(hours=2))), t0.astimezone(tz(-timedelta(hours=5)))):\n"
        "    start = nodes.resolve('model:acme/churn:1', owner, as_of)\n"
        "    walk = graph.walk(user=owner, start=start, as_of=as_of)\n"
        "    print('state', [n['state'] for n in walk.nodes.values()])\n"
    )
    printed, _ = sqlite_shell(script)
    assert printed.count("state ['registered']") == 3, printed
