"""Register demo/linear v1 and v2, promote both to the self-hosted target `local` (DEBUG only; idempotent)."""

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from governance import demo


class Command(BaseCommand):
    help = (
        "Register the demo model demo/linear (versions 1 and 2), create the self-hosted target 'local' behind "
        "the demo HAProxy, and have owner request and reviewer approve each promotion; waits until the Celery "
        "worker has made each release live. Needs seed_demo, `manage.py demo_haproxy` and a worker. "
        "Only with DJANGO_DEBUG=1. The last line is a JSON summary."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--timeout", type=float, default=180.0, help="seconds to wait for each release to go live (default 180)"
        )

    def handle(self, *args, timeout, **options):
        if not settings.DEBUG:
            raise CommandError("demo_deploy acts as the well-known demo users; it runs only with DJANGO_DEBUG=1.")
        try:
            state = demo.deploy(timeout=timeout, say=lambda line: self.stdout.write(f"demo: {line}"))
        except demo.DemoError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(json.dumps(state.as_dict(), sort_keys=True))
