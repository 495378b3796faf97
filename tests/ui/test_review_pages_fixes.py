"""What the reviewer pages say: the queue marks a request I already approved, failing rules are named in visible
text, times carry their zone, a rolled-back release says who rolled it back and why, and the request page links
the candidate's dataset lineage."""

import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.services import record
from governance import deployment, services
from governance.models import DeploymentTarget, Release, ServingPeriod
from registry import services as registry
from tests.e2e.conftest import allow_orm_beside_playwright, chromium  # noqa: F401 - fixtures of the browser check
from tests.ui import builders

MARK = ">You approved (counts)</span>"  # the badge, not the lead that explains it


def as_user(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text(response) -> str:
    assert response.status_code == 200, response.content[:500]
    return re.sub(r"\s+", " ", response.content.decode())


def queue_row(page: str, pk: int) -> str:
    """The queue's table row of request #pk."""
    return re.search(rf'<tr> <td><a href="/promotions/{pk}/">.*?</tr>', page)[0]


# --- 1. the queue marks a request I approved -----------------------------------------------------------------


def test_the_queue_marks_a_request_i_approved_while_my_approval_counts(seeded):
    owner, v2, pk = seeded["owner"].user, seeded["v2"], seeded["promotion"].pk
    registry.card_revision_add(actor=owner, version=v2, content=builders.CARD_WITH_TRAINING_DATA)
    reviewer, reviewer2 = seeded["reviewer"].user, seeded["reviewer2"]
    assert MARK not in text(as_user(reviewer).get("/reviews/"))
    done = services.promotion_approve(actor=reviewer, request_id=pk)
    assert done.state == "pending"  # the policy wants 2 approvals: it stays in the queue

    mine = queue_row(text(as_user(reviewer).get("/reviews/")), pk)
    assert MARK in mine
    assert MARK not in queue_row(text(as_user(reviewer2).get("/reviews/")), pk)  # only on the approver's own queue

    # A new card revision unbinds the approval (counted_approvals' rule): the mark goes with it.
    registry.card_revision_add(
        actor=owner, version=v2, content={**builders.CARD_WITH_TRAINING_DATA, "training_data": "Other text."}
    )
    assert MARK not in queue_row(text(as_user(reviewer).get("/reviews/")), pk)


def test_the_mark_costs_no_query_per_row(seeded):
    owner, admin, reviewer = seeded["owner"].user, seeded["admin"].user, seeded["reviewer"].user
    churn = seeded["churn"]
    registry.card_revision_add(actor=owner, version=seeded["v2"], content=builders.CARD_WITH_TRAINING_DATA)
    services.promotion_approve(actor=reviewer, request_id=seeded["promotion"].pk)
    staging = builders.target(admin, "staging", stage="staging")
    client = as_user(reviewer)

    def approve_more(count: int, start: int) -> None:
        for i in range(start, start + count):
            v = builders.version(owner, churn, f"extra{i}", card=builders.CARD_WITH_TRAINING_DATA)
            request = services.promotion_request(actor=owner, version=v, target=staging)
            services.promotion_approve(actor=reviewer, request_id=request.pk)

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            page = text(client.get("/reviews/"))
        return len(ctx.captured_queries), page.count(MARK)

    client.get("/reviews/")  # warm caches (content types, permissions)
    one, marks = queries()
    assert marks == 1
    approve_more(6, 0)
    many, marks = queries()
    assert marks == 7 and many == one, (one, many)


@pytest.mark.django_db(transaction=True)  # the live server thread must see committed rows
def test_in_a_browser_the_queue_shows_my_counted_approval(live_server, chromium, seeded):  # noqa: F811
    from playwright.sync_api import expect

    owner, v2, pk = seeded["owner"].user, seeded["v2"], seeded["promotion"].pk
    registry.card_revision_add(actor=owner, version=v2, content=builders.CARD_WITH_TRAINING_DATA)
    services.promotion_approve(actor=seeded["reviewer"].user, request_id=pk)
    session = as_user(seeded["reviewer"].user).cookies[settings.SESSION_COOKIE_NAME].value
    context = chromium.new_context()
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}])
    page = context.new_page()
    page.goto(f"{live_server.url}/reviews/")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Review #{pk}"))
    expect(row.get_by_text("You approved (counts)")).to_be_visible()


def test_failing_rules_are_named_in_visible_text(seeded):
    row = queue_row(text(as_user(seeded["reviewer"].user).get("/reviews/")), seeded["promotion"].pk)
    assert "1 failing</span> <code>card_sections</code>" in row  # not only in a tooltip


# --- 5. times carry their zone ------------------------------------------------------------------------------

ZONELESS = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d(?! UTC)")
TIME = re.compile(r'<time datetime="\d{4}-\d\d-\d\dT[^"]+">\d{4}-\d\d-\d\d \d\d:\d\d UTC</time>')


def test_times_on_the_target_model_and_version_pages_carry_their_zone(seeded):
    admin, reviewer = seeded["admin"].user, seeded["reviewer"].user
    roll_back(seeded)  # release history with a start, a live and an end time
    services.promotion_reject(actor=reviewer, request_id=seeded["promotion"].pk, comment="No training data.")
    client = as_user(admin)
    target = text(client.get("/targets/prod/"))
    history = target.split('id="history-h"')[1]
    assert len(TIME.findall(history)) >= 5, history  # release 2: started, live, ended; release 1: started, live
    model = text(client.get("/models/acme/churn/"))
    assert len(TIME.findall(model.split('id="versions-h"')[1])) == 2  # v1 and v2 registered
    version = text(client.get("/models/acme/churn/versions/2/"))
    assert len(TIME.findall(version.split('id="promotions-h"')[1].split("</table>")[0])) == 2  # requested, decided
    for page in (target, model, version):
        assert not ZONELESS.search(page), ZONELESS.search(page)


def test_a_pending_requests_time_is_text_on_the_queue_and_the_target_page(seeded):
    """The exact time was only a `title` (the queue) or not shown (the target's pending list): neither reaches a
    keyboard or touch user."""
    client = as_user(seeded["reviewer"].user)
    shown = re.compile(r'<time datetime="\d{4}-\d\d-\d\dT[^"]+"[^>]*>\d{4}-\d\d-\d\d \d\d:\d\d UTC</time>')
    assert shown.search(text(client.get("/reviews/")).split("<tbody>")[1])
    pending = text(as_user(seeded["admin"].user).get("/targets/prod/")).split('id="pending-h"')[1].split("</ul>")[0]
    assert shown.search(pending), pending


# --- 6. who rolled a release back, and why --------------------------------------------------------------------


def roll_back(seeded, *reasons: str) -> Release:
    """prod: release 2 (acme/churn v2) live after release 1, then rolled back to release 1 by the admin, once per
    reason, moving back to release 2 between them. Returns release 2."""
    prod, admin = seeded["prod"], seeded["admin"].user
    now = timezone.now()
    r1 = Release.objects.get(target=prod, number=1)
    Release.objects.filter(pk=r1.pk).update(state="superseded", live_at=now - timedelta(hours=2))
    r2 = builders.release(prod, seeded["v2"], 2)
    ServingPeriod.objects.create(
        target=prod, release=r1, started_at=now - timedelta(hours=2), ended_at=now - timedelta(hours=1)
    )
    ServingPeriod.objects.create(target=prod, release=r2, started_at=now - timedelta(hours=1))
    DeploymentTarget.objects.filter(pk=prod.pk).update(desired_release=r2)
    for i, reason in enumerate(reasons or ["p95 doubled"]):
        if i:
            deployment.deployment_rollback(actor=admin, target=prod, reason="try 2 again", to_number=2)
        deployment.deployment_rollback(actor=admin, target=prod, reason=reason, to_number=1)
    r2.refresh_from_db()
    assert r2.state == "rolled_back"
    return r2


def history_row(page: str, number: int) -> str:
    return re.search(rf'<tr> <td class="num">{number}</td>.*?</tr>', page.split('id="history-h"')[1])[0]


def test_a_rolled_back_release_says_who_rolled_it_back_and_why(seeded):
    roll_back(seeded, "p95 doubled", "errors <b>again</b>")
    page = text(as_user(seeded["reviewer"].user).get("/targets/prod/"))
    row = history_row(page, 2)
    # the newest rollback from it, escaped
    assert 'rolled_back</span> <span class="small">by admin: ' in row
    assert "errors &lt;b&gt;again&lt;/b&gt;" in row and "p95 doubled" not in row
    # release 1 was rolled back from too (to release 2, in between), but is desired again: nothing shown
    assert "by admin:" not in history_row(page, 1)


def test_the_rollback_reason_costs_no_query_per_row(seeded):
    client = as_user(seeded["reviewer"].user)
    client.get("/targets/prod/")

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            text(client.get("/targets/prod/"))
        return len(ctx.captured_queries)

    before = queries()
    roll_back(seeded, "one", "two", "three")
    for number in range(3, 8):  # more rolled-back rows
        release = builders.release(seeded["prod"], seeded["v2"], number, state="rolled_back")
        record(
            action="release.rolled_back",
            subject=seeded["prod"],
            actor=seeded["admin"].user,
            reason=f"why {number}",
            after={"from": number, "to": 1, "model": "acme/churn", "version": 2},
        )
        assert release.state == "rolled_back"
    page = text(client.get("/targets/prod/"))
    assert all(f'by admin: <span class="prewrap">why {n}</span>' in page for n in range(3, 8)), page
    assert queries() == before


def test_the_rollback_is_not_shown_to_who_may_not_view_the_model(seeded, django_user_model):
    roll_back(seeded, "p95 doubled on churn")
    user = django_user_model.objects.create_user(username="ops")
    user.user_permissions.add(Permission.objects.get(codename="view_deploymenttarget"))
    page = text(as_user(user).get("/targets/prod/"))
    assert "rolled_back" in history_row(page, 2)
    assert "p95 doubled" not in page and "by admin" not in page
    # a reader of the model reads it
    assert "by admin: " in history_row(text(as_user(seeded["reviewer"].user).get("/targets/prod/")), 2)


# --- 7. the request page links the candidate's dataset lineage ------------------------------------------------


def test_the_request_page_links_the_candidates_lineage_graph_and_trail(seeded):
    client = as_user(seeded["reviewer"].user)
    page = client.get(f"/promotions/{seeded['promotion'].pk}/").content.decode()
    assert "Not recorded yet" not in page
    row = re.search(r'<th scope="row">Input datasets</th>.*?</tr>', page, re.S)[0]
    graph = re.search(r'<a href="(/lineage/\?nodeId=[^"]+)">lineage graph</a>', row)[1]
    trail = re.search(r'<a href="(/api/v1/lineage/trail\?[^"]+)">lineage trail</a>', row)[1].replace("&amp;", "&")
    assert graph == "/lineage/?nodeId=model%3Aacme%2Fchurn%3A2"
    assert trail == "/api/v1/lineage/trail?nodeId=model%3Aacme%2Fchurn%3A2&format=html"
    assert client.get(graph).status_code == 200
    r = client.get(trail, HTTP_SEC_FETCH_SITE="same-origin")
    assert r.status_code == 200 and r["Content-Type"].startswith("text/html"), r.content[:300]


# --- minor: the Models page has its own title -----------------------------------------------------------------


def test_the_models_page_has_its_own_title(seeded):
    page = text(as_user(seeded["reviewer"].user).get("/"))
    assert "<title>Models · Model Governance Registry</title>" in page
