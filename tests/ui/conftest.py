import pytest

from tests.ui import builders


@pytest.fixture
def seeded(personas):
    """prod (2 approvals by reviewers, training_data required, auc >= 0.85) serving acme/churn v1;
    v2 (better auc, card without training_data) requested for promotion by the owner."""
    admin, owner = personas["admin"].user, personas["owner"].user
    prod = builders.target(admin)
    churn = builders.model(owner)
    v1 = builders.version(
        owner, churn, "v1", metrics={"auc": 0.88, "latency_ms": 40}, card=builders.CARD_WITH_TRAINING_DATA
    )
    builders.release(prod, v1, 1)
    v2 = builders.version(
        owner, churn, "v2", metrics={"auc": 0.91, "latency_ms": 35}, card=builders.CARD_WITHOUT_TRAINING_DATA
    )
    from governance import services

    promotion = services.promotion_request(actor=owner, version=v2, target=prod, reason="Better AUC.")
    return {
        **personas,
        "prod": prod,
        "churn": churn,
        "v1": v1,
        "v2": v2,
        "promotion": promotion,
        "reviewer2": builders.reviewer("reviewer2"),
    }
