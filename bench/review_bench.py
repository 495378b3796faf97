"""Review queue page with N pending promotion requests, and the page of their model (N versions): server time and
SQL statements per page.

Run by bench/run.py (`--only review`) as a script in the bench database's environment:

    python bench/review_bench.py SIZES REQUESTS [REPS]   # e.g. "100,10000" 100 3

For each size it tops the queue up to that many pending requests (one version each, target `review`
whose policy names the `reviewers` group; every third request already has one approval), then, as a
reviewer logged in with a session, renders `GET /reviews/` (first page) and `GET /reviews/?after=<pk>`
(the last page; the queue pages by position, core/keyset.py), then the model's page `/models/bench/review/`
(versions newest first) and its last page (`?after=<pk>`), REQUESTS times each through Django's full request
stack in this process (middleware, view, selectors, template), and reports p50/p95 and the SQL statements per
page. The statement count and the time must not depend on the queue length or the number of versions.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

from stats import pct  # bench/stats.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(sizes: list[int], requests: int, reps: int = 1) -> dict:
    import logging

    import django

    django.setup()
    logging.disable(logging.WARNING)
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from accounts import roles
    from governance import services as gov
    from governance.models import Approval, DeploymentTarget, Policy, PromotionRequest
    from registry import services as reg
    from registry.models import ModelVersion, RegisteredModel

    roles.ensure_roles()
    User = get_user_model()
    admin, _ = User.objects.get_or_create(username="bench-admin", defaults={"is_superuser": True, "is_staff": True})
    requester, _ = User.objects.get_or_create(username="bench-requester")
    reviewer, _ = User.objects.get_or_create(username="bench-reviewer")
    other_reviewer, _ = User.objects.get_or_create(username="bench-reviewer-2")
    for user in (reviewer, other_reviewer):
        user.groups.add(Group.objects.get(name=roles.REVIEWERS))
    target = DeploymentTarget.objects.filter(name="review").first()
    if target is None:
        target = gov.target_create(
            actor=admin,
            name="review",
            kind="self_hosted",
            stage="production",
            config={"backend": "review"},
            policy={"approvals_required": 2, "approver_groups": [roles.REVIEWERS], "requester_can_approve": False},
        )
    policy = Policy.objects.filter(target=target, model__isnull=True).order_by("-version").first()
    model = RegisteredModel.objects.filter(namespace="bench", name="review").first()
    if model is None:
        model = reg.model_create(actor=admin, namespace="bench", name="review")

    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(reviewer)
    results = {}
    for size in sizes:
        have = PromotionRequest.objects.filter(target=target, state="pending").count()
        if have < size:
            start = model.latest_number
            new = size - have
            versions = []
            for n in range(start + 1, start + new + 1):
                sha = hashlib.sha256(f"review:{n}".encode()).hexdigest()
                versions.append(
                    ModelVersion(
                        model=model,
                        number=n,
                        digest="sha256:" + hashlib.sha256(sha.encode()).hexdigest(),
                        manifest={"files": [{"path": "model.bin", "size": n, "sha256": sha}]},
                        artifact_uri=f"s3://bench/review/{n}/",
                        metrics={"auc": 0.9},
                        created_by=requester,
                    )
                )
            versions = ModelVersion.objects.bulk_create(versions, batch_size=2000)
            RegisteredModel.objects.filter(pk=model.pk).update(latest_number=start + new)
            model.latest_number = start + new
            expires = timezone.now() + timedelta(days=30)
            requests_ = PromotionRequest.objects.bulk_create(
                [PromotionRequest(version=v, target=target, requester=requester, expires_at=expires) for v in versions],
                batch_size=2000,
            )
            Approval.objects.bulk_create(
                [
                    Approval(request=r, user=other_reviewer, decision="approve", digest=r.version.digest, policy=policy)
                    for r in requests_[::3]
                ],
                batch_size=2000,
            )
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE governance_promotionrequest")
                cursor.execute("ANALYZE governance_approval")
        queue = PromotionRequest.objects.filter(target=target, state="pending").order_by("created_at", "id")
        pending = queue.count()
        last_page_after = queue.values_list("pk", flat=True)[max(0, pending - 26)]  # the row before the last 25
        # The model page lists the model's versions newest first (one per request here), by position too.
        versions = ModelVersion.objects.filter(model=model).order_by("-number")
        oldest_page_after = versions.values_list("pk", flat=True)[max(0, model.latest_number - 26)]
        model_page = f"/models/{model.namespace}/{model.name}/"
        per_size = {"pending": pending, "versions": model.latest_number}
        for label, path in (
            ("first page", "/reviews/"),
            ("last page", f"/reviews/?after={last_page_after}"),
            ("model page, first", model_page),
            ("model page, last", f"{model_page}?after={oldest_page_after}"),
        ):
            for _ in range(5):
                client.get(path)
            rep_figures, statements = [], set()
            for _ in range(reps):
                times = []
                for _ in range(requests):
                    with CaptureQueriesContext(connection) as queries:
                        t0 = time.perf_counter()
                        response = client.get(path)
                        times.append((time.perf_counter() - t0) * 1000)
                    if response.status_code != 200:
                        raise RuntimeError(f"GET {path} -> {response.status_code}")
                    statements.add(len(queries))
                rep_figures.append((pct(times, 50), pct(times, 95)))
            per_size[label] = {
                "path": path,
                "p50_ms": statistics.median(f[0] for f in rep_figures),
                "p95_ms": statistics.median(f[1] for f in rep_figures),
                "reps": rep_figures,
                "sql_statements": sorted(statements),
                "bytes": len(response.content),
            }
        results[str(size)] = per_size
    return results


if __name__ == "__main__":
    sizes = [int(x) for x in sys.argv[1].split(",")]
    print(json.dumps(main(sizes, int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)))
