from django.db import migrations

from core.db import ProtectRows


class Migration(migrations.Migration):
    dependencies = [("governance", "0001_initial")]

    operations = [
        ProtectRows(
            "governance_policy",
            columns=["target_id", "model_id", "version", "rules", "created_at"],
            message="policies are versioned: add a new policy version instead of changing one",
        ),
        ProtectRows(
            "governance_approval",
            columns=[
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
