"""Demo users for the local quickstart, one per role, with known passwords. DEBUG only; idempotent."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts import roles, services
from core import context

ACTOR = "cli:seed_demo"

# username -> (role groups, superuser and staff)
DEMO_USERS: dict[str, tuple[list[str], bool]] = {
    "admin": ([], True),
    "owner": ([roles.MODEL_OWNERS], False),
    "reviewer": ([roles.REVIEWERS], False),
    "reviewer2": ([roles.REVIEWERS], False),
    "auditor": ([roles.AUDITORS], False),
    "ci-bot": ([roles.CI_BOTS], False),
}


def demo_password(username: str) -> str:
    return f"demo-{username}"


class Command(BaseCommand):
    help = "Create the demo users (admin, owner, reviewer, reviewer2, auditor, ci-bot). Only with DJANGO_DEBUG=1."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("seed_demo creates users with well-known passwords; it runs only with DJANGO_DEBUG=1.")
        actor_token = context.actor.set(ACTOR)  # role and group changes are audited by signals under this actor
        try:
            groups = roles.ensure_roles()
            for username, (group_names, is_admin) in DEMO_USERS.items():
                self.seed_user(username, [groups[name] for name in group_names], is_admin)
        finally:
            context.actor.reset(actor_token)
        self.print_logins()

    @transaction.atomic
    def seed_user(self, username: str, groups, is_admin: bool) -> None:
        user, _ = services.user_get_or_create(actor=ACTOR, username=username)
        user = get_user_model().objects.select_for_update(no_key=True).get(pk=user.pk)
        before = {"is_staff": user.is_staff, "is_superuser": user.is_superuser}
        after = {"is_staff": is_admin, "is_superuser": is_admin}
        if before != after:
            user.is_staff = user.is_superuser = is_admin
            user.save(update_fields=["is_staff", "is_superuser"])  # audited by accounts.signals, as ACTOR
        if not user.check_password(demo_password(username)):
            user.set_password(demo_password(username))
            user.save(update_fields=["password"])
        missing = [group for group in groups if not user.groups.filter(pk=group.pk).exists()]
        if missing:
            user.groups.add(*missing)

    def print_logins(self) -> None:
        rows = [("user", "password", "role")]
        for username, (group_names, is_admin) in DEMO_USERS.items():
            rows.append((username, demo_password(username), "superuser" if is_admin else ", ".join(group_names)))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        self.stdout.write("Demo logins (sign in at /; admin also at /admin/; the API is described at /api/docs/):")
        for row in rows:
            line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            self.stdout.write(("  " + line).rstrip())
        self.stdout.write(
            "A read-only API token for the auditor (shown once; send it as 'Authorization: Bearer <token>'):\n"
            "  .venv/bin/python manage.py create_api_token auditor --scopes read,audit:read"
        )
