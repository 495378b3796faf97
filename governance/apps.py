from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"

    def ready(self) -> None:
        # Governance's sections of the lineage trail, release trails and release lineage nodes
        # (lineage offers the hooks; it never imports governance).
        from governance import deployment, trail_sections
        from registry.services import register_archive_check

        trail_sections.register()
        register_archive_check(deployment.check_archive)
