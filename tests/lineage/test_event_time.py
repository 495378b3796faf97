"""eventTime (and nominalTime's times) is what OpenLineage's schema says: `"format": "date-time"`, JSON Schema's
date-time, which is RFC 3339's (section 5.6): 'T' between date and time, seconds and an offset required, 't' and
'z' allowed, second 60 for a leap second. The parser took other ISO 8601 forms (no seconds, basic format, week
dates) and refused leap seconds. One exception: a time without an offset is read as UTC, as before, since the
official client sends such times (test_openlineage_client.py)."""

import uuid
from datetime import UTC, datetime

import pytest

from lineage.models import LineageEvent
from tests.lineage.conftest import PRODUCER, run_event

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("2026-01-01T12:00:00Z", datetime(2026, 1, 1, 12, tzinfo=UTC)),
        ("2026-01-01t12:00:00.5z", datetime(2026, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)),
        ("2026-01-01T14:00:00+02:00", datetime(2026, 1, 1, 12, tzinfo=UTC)),
        ("2026-01-01T12:00:00-00:00", datetime(2026, 1, 1, 12, tzinfo=UTC)),  # offset unknown: the UTC time
        # no offset: read as UTC (the OpenLineage client lets it through; its examples send datetime.now().isoformat())
        ("2026-01-01T12:00:00.25", datetime(2026, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)),
        ("2026-01-01T12:00:00.1234567Z", datetime(2026, 1, 1, 12, 0, 0, 123_456, tzinfo=UTC)),  # cut, not rounded
        # a leap second, at 23:59:60 UTC however it is written, is the last microsecond of its day
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
        ("2016-12-31T15:59:60.25-08:00", datetime(2016, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
    ],
)
def test_an_rfc_3339_date_time_is_accepted(personas, sent, stored):
    body = run_event("START", uuid.uuid4(), ("etl", "load"), time=sent)
    response = personas["ci_bot"].client().post("/api/v1/lineage", body, format="json")
    assert response.status_code == 201, response.json()
    assert LineageEvent.objects.get(pk=response.json()["event"]).event_time == stored


@pytest.mark.parametrize(
    ("sent", "message"),
    [
        ("2026-01-01 12:00:00Z", "with a space"),
        ("2026-01-01T12:00Z", "is not an RFC 3339 date-time"),  # no seconds
        ("20260101T120000Z", "is not an RFC 3339 date-time"),  # ISO 8601 basic format
        ("2026-W01-4T12:00:00Z", "is not an RFC 3339 date-time"),  # week date
        ("2026-001T12:00:00Z", "is not an RFC 3339 date-time"),  # ordinal date
        ("2026-01-01T12:00:00,5Z", "is not an RFC 3339 date-time"),  # decimal comma
        ("2026-01-01T12:00:00+0200", "is not an RFC 3339 date-time"),  # offset without its colon
        ("2026-01-01T12:00:00+24:00", "an offset's hours are 00-23"),
        ("2026-02-29T12:00:00Z", "day is out of range"),
        ("2016-12-31T23:58:60Z", "only at 23:59:60 UTC"),
        ("2026-01-01", "has no time part"),
    ],
)
def test_anything_else_is_a_400_saying_what_is_wrong(personas, sent, message):
    client = personas["ci_bot"].client()
    events = LineageEvent.objects.count()
    nominal = {"_producer": PRODUCER, "_schemaURL": "https://x/NominalTime.json", "nominalStartTime": sent}
    in_facet = run_event("START", uuid.uuid4(), ("etl", "load"))
    in_facet["run"]["facets"] = {"nominalTime": nominal}
    for field, body in (
        ("eventTime", run_event("START", uuid.uuid4(), ("etl", "load"), time=sent)),
        ("run.facets.nominalTime.nominalStartTime", in_facet),
    ):
        response = client.post("/api/v1/lineage", body, format="json")
        assert response.status_code == 400, response.json()
        error = response.json()["error"]
        assert list(error["detail"]) == [field], error
        assert message in error["message"] and f"'{sent}'" in error["message"], error
    assert LineageEvent.objects.count() == events
