from django.core.management.base import BaseCommand

from accounts.roles import ensure_roles


class Command(BaseCommand):
    help = "Create the built-in role groups and their model-wide permissions (idempotent)."

    def handle(self, *args, **options):
        for name, group in ensure_roles().items():
            perms = ", ".join(sorted(p.codename for p in group.permissions.all())) or "(object permissions only)"
            self.stdout.write(f"{name}: {perms}")
