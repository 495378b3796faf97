from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts import roles as role_names
from accounts import scopes, services
from core import context
from core.errors import DomainError

ACTOR = "cli:create_api_token"


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it alone on the last line (it is shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--scopes", required=True, help=f"comma-separated; known: {','.join(scopes.ALL)}")
        parser.add_argument("--create-user", action="store_true", help="create the user if it does not exist")
        parser.add_argument("--expires-in-days", type=int, default=None)
        parser.add_argument("--name", default="", help="a label for the token (default: cli)")
        known_roles = ",".join(role_names.ROLE_PERMISSIONS)
        parser.add_argument("--roles", default="", help=f"comma-separated roles to add the user to: {known_roles}")

    def handle(self, *args, username, scopes, create_user, expires_in_days, name, roles, **options):
        context.actor.set(ACTOR)  # group changes below are audited (signals) with this actor
        wanted_roles = [r.strip() for r in roles.split(",") if r.strip()]
        unknown = sorted(set(wanted_roles) - set(role_names.ROLE_PERMISSIONS))
        if unknown:
            known = ", ".join(role_names.ROLE_PERMISSIONS)
            raise CommandError(f"Unknown role(s): {', '.join(unknown)}. Roles: {known}.")
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None and not create_user:
            raise CommandError(f"No user '{username}'. Pass --create-user to create it.")
        try:
            # One transaction: a token refused (an unknown scope, an expiry out of range) leaves no user created
            # and no role granted behind, nor their audit events.
            with transaction.atomic():
                if user is None:
                    user, _ = services.user_get_or_create(actor=ACTOR, username=username)
                if wanted_roles:
                    groups = role_names.ensure_roles()
                    user.groups.add(*(groups[r] for r in wanted_roles))
                issued = services.token_create(
                    actor=ACTOR, user=user, name=name or "cli", scopes=scopes, expires_in_days=expires_in_days
                )
        except DomainError as exc:
            raise CommandError(exc.message) from None
        token = issued.token
        expiry = token.expires_at.isoformat() if token.expires_at else "never"
        self.stdout.write(
            f"Created token {token.prefix} for {username} with scopes {','.join(token.scopes)} (expires: {expiry})."
        )
        self.stdout.write(issued.plaintext)
