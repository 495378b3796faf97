"""URLs in lineage events carry no credential (a GitLab CI_REPOSITORY_URL holds its job token, a presigned link its
signature): they are stored and shown in every export and the trail to whoever may read the lineage. And a facet's
`_producer`/`_schemaURL` are URIs, as the 2-0-2 BaseFacet says, since the export sends them on as they are."""

import copy
import uuid

import pytest

from tests.lineage.conftest import ol_dataset, post_event, run_event
from tests.lineage.test_control_characters import stored

pytestmark = pytest.mark.django_db

SOURCE = ("job", "facets", "sourceCodeLocation")


def event(**changes) -> dict:
    """A RunEvent with a source location and an input with a data source; `changes`: dotted path -> value."""
    source = ol_dataset("s3://lake", "raw/events", version="v1")
    source["facets"]["dataSource"] = {"name": "lake", "uri": "s3://lake/raw"}
    body = run_event("COMPLETE", uuid.uuid4(), ("etl", "train"), inputs=[source], commit="c0ffee")
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = body
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[key] = value
    return body


@pytest.mark.parametrize(
    ("dotted", "value", "advice"),
    [
        (
            "job.facets.sourceCodeLocation.url",
            "https://x-access-token:ghs_1@github.com/a/b/blob/c/t.py",
            "user:password@",
        ),
        ("job.facets.sourceCodeLocation.repoUrl", "https://gitlab-ci-token:glcbt-1@gitlab.example.com/a.git", "user:"),
        ("job.facets.sourceCodeLocation.repoUrl", "https://ghp_token1@github.com/a/b.git", "user name"),
        ("inputs.0.facets.dataSource.uri", "https://lake.example.com/raw?X-Amz-Signature=abc1", "X-Amz-Signature"),
        ("run.facets.custom", {"_producer": "not a uri", "_schemaURL": "https://x/y.json", "x": 1}, "is not a URI"),
        ("run.facets.custom", {"_producer": "https://x/p", "_schemaURL": "", "x": 1}, "must not be empty"),
    ],
)
def test_refused_with_the_field_and_nothing_stored(personas, dotted, value, advice):
    client = personas["ci_bot"].client()
    before = stored()
    response = client.post("/api/v1/lineage", event(**{dotted: value}), format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert advice in error["message"], error
    field = dotted.replace(".0.", "[0].") if not dotted.startswith("run.facets.custom") else ""
    assert not field or list(error["detail"]) == [field], error
    assert stored() == before


def test_what_real_clients_send_is_still_taken(personas):
    """An ssh clone location, a public https URL and a facet naming its producer and schema by URL."""
    body = event(
        **{
            "job.facets.sourceCodeLocation.repoUrl": "git@github.com:acme/train.git",
            "run.facets.custom": {"_producer": "https://github.com/acme/p", "_schemaURL": "https://x/y.json", "x": 1},
        }
    )
    post_event(personas["ci_bot"].client(), copy.deepcopy(body))
