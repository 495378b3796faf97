from django.apps import AppConfig


class LineageConfig(AppConfig):
    name = "lineage"

    def ready(self) -> None:
        from lineage.services import check_may_claim_run
        from registry.services import register_run_claim_check

        register_run_claim_check(check_may_claim_run)
