from django.db import migrations

from core.db import ProtectRows

# The id is part of what is protected: a request's approvals and the policy version a review was bound to are named by
# id, and two ids swapped in one transaction passed the deferred foreign-key checks.

POLICY_COLUMNS = ["target_id", "model_id", "version", "rules", "created_at"]  # protected by 0002
APPROVAL_COLUMNS = [  # protected by 0002
    "request_id",
    "user_id",
    "decision",
    "comment",
    "digest",
    "card_revision",
    "policy_id",
    "created_at",
]


class Migration(migrations.Migration):
    dependencies = [("governance", "0010_webhook_url_at_rest_secret_rotation")]

    operations = [
        ProtectRows(
            "governance_policy",
            columns=["id", *POLICY_COLUMNS],
            replaces=POLICY_COLUMNS,
            message="policies are versioned: add a new policy version instead of changing one",
        ),
        ProtectRows(
            "governance_approval",
            columns=["id", *APPROVAL_COLUMNS],
            replaces=APPROVAL_COLUMNS,
            message="approvals are append-only",
        ),
    ]
