from django.apps import AppConfig
from django.core import checks


class CoreConfig(AppConfig):
    name = "core"

    def ready(self):
        from core.checks import embedded_backends

        checks.register(embedded_backends)  # untagged: `collectstatic` (staticfiles checks only) skips it
