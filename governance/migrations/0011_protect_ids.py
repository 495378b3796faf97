from django.db import migrations

from core.db import ProtectRows

# The id is part of what is protected: a request's approvals and the policy version a review was bound to are named by
# id, and two ids swapped in one transaction passed the deferred foreign-key checks.


class Migration(migrations.Migration):
    dependencies = [("governance", "0010_webhook_url_at_rest_secret_rotation")]

    operations = [
        ProtectRows(
            "governance_policy",
            columns=["id", "target_id", "model_id", "version", "rules", "created_at"],
            replaces=["target_id", "model_id", "version", "rules", "created_at"],
            message="policies are versioned: add a new policy version instead of changing one",
        ),
        ProtectRows(
            "governance_approval",
            columns=[
                "id",
                "request_id",
                "user_id",
                "decision",
                "comment",
                "digest",
                "card_revision",
                "policy_id",
                "created_at",
            ],
            replaces=[
                "request_id",
                "user_id",
                "decision",
                "comment",
                "digest",
                "card_revision",
                "policy_id",
                "created_at",
            ],
            message="approvals are append-only",
        ),
    ]
