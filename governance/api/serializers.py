from rest_framework import serializers

from core.api import StrictSerializer
from governance import free_text
from governance.choices import HostKind, PromotionState


class TargetCreateInput(StrictSerializer):
    name = serializers.CharField(max_length=64)
    kind = serializers.ChoiceField(choices=HostKind.choices)
    stage = serializers.CharField(max_length=64)
    config = serializers.DictField(required=False, default=dict, help_text="host configuration; fields per kind")
    credentials_ref = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        default="",
        help_text="where the worker finds the credential: env:VAR_NAME or secret:name (never the value)",
    )
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=free_text.MAX_CHARS)
    rollout = serializers.DictField(
        required=False,
        default=dict,
        help_text="canary steps, for hosts that split traffic: {steps: [10, 50, 100], step_seconds, "
        "max_error_rate, max_latency_ms?, min_requests}; omitted: each release takes all traffic at once",
    )
    policy = serializers.DictField(
        required=False,
        default=dict,
        help_text="approvals_required, approver_groups, requester_can_approve, required_card_sections, "
        "metric_gates [{metric, op, threshold, dataset?, split?}], allowed_licenses, require_lineage, "
        "require_signature, require_verified_digest, min_live_on_stage {stage, hours}, request_expiry_hours",
    )


class PolicyOutput(serializers.Serializer):
    version = serializers.IntegerField()
    model = serializers.CharField(allow_null=True)
    rules = serializers.DictField()
    created_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()

    def to_representation(self, policy):
        return {
            "version": policy.version,
            "model": str(policy.model) if policy.model_id else None,
            "rules": policy.rules,
            "created_by": policy.created_by.username if policy.created_by else None,
            "created_at": serializers.DateTimeField().to_representation(policy.created_at),
        }


class HidesModel(serializers.Serializer):
    """A release of a model the caller may not view names nothing of it (as in the web UI): `model`,
    `version`, `digest`, `promotion` and what would name them (the endpoint URL and host release id carry
    the model's name and digest, the reason the promotion) are null and `model_hidden` is true. The view
    puts the caller's `visible_model_ids` in the serializer context; without it the serializer fails
    rather than show all."""

    HIDDEN = ("model", "version", "digest", "promotion", "endpoint_url", "host_revision", "host_release_id", "reason")
    model_hidden = serializers.SerializerMethodField(help_text="The caller may not view this release's model.")

    def get_model_hidden(self, release) -> bool:
        return release.version.model_id not in self.context["visible_model_ids"]

    def to_representation(self, release):
        data = super().to_representation(release)
        if data["model_hidden"]:
            data.update({name: None for name in self.HIDDEN if name in data})
        return data


class ReleaseSummary(HidesModel):
    number = serializers.IntegerField()
    model = serializers.CharField(source="version.model.__str__", allow_null=True)
    version = serializers.IntegerField(source="version.number", allow_null=True)
    digest = serializers.CharField(source="version.digest", allow_null=True)
    state = serializers.CharField()
    live_at = serializers.DateTimeField(allow_null=True)


class TargetOutput(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.CharField()
    stage = serializers.CharField()
    config = serializers.DictField()
    credentials_ref = serializers.CharField()
    rollout = serializers.DictField()
    description = serializers.CharField()
    capabilities = serializers.ListField(child=serializers.CharField())
    policy = PolicyOutput()
    live_release = ReleaseSummary(allow_null=True)
    created_at = serializers.DateTimeField()


class PromotionInput(StrictSerializer):
    model = serializers.RegexField(r"^[^/]+/[^/]+$", help_text="namespace/name")
    version = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    target = serializers.CharField(max_length=64)
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=free_text.MAX_CHARS)


class CheckOutput(serializers.Serializer):
    rule = serializers.CharField()
    passed = serializers.BooleanField()
    reason = serializers.CharField()


class DryRunOutput(serializers.Serializer):
    model = serializers.CharField()
    version = serializers.IntegerField()
    digest = serializers.CharField()
    target = serializers.CharField()
    policy_version = serializers.IntegerField()
    approvals_required = serializers.IntegerField()
    checks = CheckOutput(many=True)
    passed = serializers.BooleanField()


class ApprovalOutput(serializers.Serializer):
    user = serializers.CharField()
    decision = serializers.CharField()
    comment = serializers.CharField()
    at = serializers.DateTimeField()
    counts = serializers.BooleanField(help_text="still bound to the current digest, card revision and policy")
    card_revision = serializers.IntegerField(allow_null=True)
    policy_version = serializers.IntegerField()


class PromotionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    state = serializers.ChoiceField(choices=PromotionState.choices)
    model = serializers.CharField()
    version = serializers.IntegerField()
    digest = serializers.CharField()
    host_revision = serializers.CharField(
        help_text="what a managed host deploys (Replicate version, HF commit, Modal tag), fixed when requested; "
        "empty for self-hosted targets' artifacts"
    )
    target = serializers.CharField()
    requester = serializers.CharField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    decided_at = serializers.DateTimeField(allow_null=True)
    policy_version = serializers.IntegerField()
    approvals_required = serializers.IntegerField()
    approvals_counted = serializers.IntegerField()
    approvals = ApprovalOutput(many=True)
    checks = CheckOutput(many=True)


class PromotionListItem(serializers.Serializer):
    id = serializers.IntegerField()
    state = serializers.CharField()
    model = serializers.CharField(source="version.model.__str__")
    version = serializers.IntegerField(source="version.number")
    target = serializers.CharField(source="target.name")
    requester = serializers.CharField(source="requester.username")
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    decided_at = serializers.DateTimeField(allow_null=True)


class PromotionListQuery(StrictSerializer):
    state = serializers.ChoiceField(choices=PromotionState.choices, required=False)
    target = serializers.CharField(required=False, max_length=64)
    model = serializers.RegexField(r"^[^/]+/[^/]+$", required=False)
    waiting_for_me = serializers.BooleanField(required=False, default=False)
    cursor = serializers.CharField(required=False)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=500)


class SeenInput(StrictSerializer):
    """What the reviewer looked at. Each field given must still be current, or the decision is refused
    with 409 changed_since_review and nothing is recorded."""

    digest = serializers.RegexField(
        r"^sha256:[0-9a-f]{64}$", required=False, help_text="the version's digest the reviewer checked"
    )
    card_revision = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, help_text="the model card revision read (null: no card)"
    )
    policy_version = serializers.IntegerField(required=False, min_value=1, help_text="the policy version applied")

    def seen(self) -> dict:
        return {
            k: self.validated_data[k] for k in ("digest", "card_revision", "policy_version") if k in self.validated_data
        }


class ApproveInput(SeenInput):
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=free_text.MAX_CHARS)


class RejectInput(SeenInput):
    comment = serializers.CharField(max_length=free_text.MAX_CHARS, help_text="required: what must change")


class CancelInput(StrictSerializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=free_text.MAX_CHARS)


class RollbackInput(StrictSerializer):
    reason = serializers.CharField(max_length=free_text.MAX_CHARS, help_text="required: why traffic goes back")
    release = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=1,
        max_value=2**31 - 1,
        help_text="the release number to return to; default: the release that served before the current one",
    )


class ReleaseOutput(HidesModel):
    number = serializers.IntegerField()
    target = serializers.CharField(source="target.name")
    model = serializers.CharField(source="version.model.__str__", allow_null=True)
    version = serializers.IntegerField(source="version.number", allow_null=True)
    digest = serializers.CharField(source="version.digest", allow_null=True)
    state = serializers.CharField()
    traffic_percent = serializers.IntegerField()
    endpoint_url = serializers.CharField(allow_null=True)
    host_revision = serializers.CharField(allow_null=True, help_text="what the host deploys, as its promotion fixed it")
    host_release_id = serializers.CharField(allow_null=True)
    promotion = serializers.IntegerField(source="promotion_id", allow_null=True)
    reason = serializers.CharField(allow_null=True)
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    created_at = serializers.DateTimeField()
    live_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)


class ServedAtQuery(StrictSerializer):
    at = serializers.DateTimeField(help_text="RFC 3339 time")


class ServedAtOutput(serializers.Serializer):
    at = serializers.DateTimeField()
    release = ReleaseOutput(allow_null=True)
    serving_since = serializers.DateTimeField(allow_null=True)
    serving_until = serializers.DateTimeField(allow_null=True)
