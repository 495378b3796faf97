from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"

    def ready(self) -> None:
        # Governance's sections of the lineage trail, release trails and release lineage nodes
        # (lineage offers the hooks; it never imports governance).
        from governance import trail_sections

        trail_sections.register()
