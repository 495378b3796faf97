from django.db import models


class HostKind(models.TextChoices):
    REPLICATE = "replicate"
    HF_ENDPOINT = "hf_endpoint"
    MODAL = "modal"
    SELF_HOSTED = "self_hosted"


class PromotionState(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


# Only pending requests move; every other state is final (an approved request is handed to deployment).
PROMOTION_TRANSITIONS = {
    PromotionState.PENDING: {
        PromotionState.APPROVED,
        PromotionState.REJECTED,
        PromotionState.CANCELLED,
        PromotionState.EXPIRED,
    },
}


class Decision(models.TextChoices):
    APPROVE = "approve"
    REJECT = "reject"


class MetricOp(models.TextChoices):
    GTE = ">="
    GT = ">"
    LTE = "<="
    LT = "<"
    EQ = "=="


class ReleaseState(models.TextChoices):
    PENDING = "pending"
    DEPLOYING = "deploying"
    LIVE = "live"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled_back"
