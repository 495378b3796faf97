from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent, build_choice_field
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from core.api import StrictSerializer
from governance import free_text
from governance.choices import Decision, HostKind, MetricOp, PromotionState, ReleaseState
from governance.policy import MAX_SOAK_HOURS
from registry.cards import SECTIONS

# The schema component of each choice set. drf-spectacular names an enum after its field, and when a field name
# (`state`: promotions, webhook deliveries; `kind`: targets, lineage edges) carries several choice sets, after the one
# component using each set; a set used by several components it could only name by a hash (a warning). So one field
# per set stays a plain ChoiceField, named by drf-spectacular as before (PromotionOutput.state, TargetCreateInput.kind),
# and every other field of the set is an EnumField referring to that same component: each set is one enum, under the
# name generated clients already know. tests/governance/test_target_overrides_and_schema.py checks both.
ENUM_NAMES = {
    PromotionState: "PromotionOutputStateEnum",
    HostKind: "TargetCreateInputKindEnum",
    ReleaseState: "ReleaseStateEnum",
    Decision: "DecisionEnum",
}


class EnumField(serializers.ChoiceField):
    """A ChoiceField over one of governance.choices' TextChoices, documented as its component (ENUM_NAMES)."""

    def __init__(self, enum, **kwargs):
        self.enum = enum
        super().__init__(choices=enum.choices, **kwargs)


class EnumFieldSchema(OpenApiSerializerFieldExtension):
    target_class = EnumField

    def map_serializer_field(self, auto_schema, direction):
        name = ENUM_NAMES[self.target.enum]
        schema = build_choice_field(serializers.ChoiceField(choices=self.target.enum.choices))
        del schema["x-spec-enum-id"]
        # Identified by its name, as drf-spectacular's enum hook registers the component of the plain ChoiceField:
        # the same component to it, not a collision.
        component = ResolvedComponent(name=name, type=ResolvedComponent.SCHEMA, schema=schema, object=name)
        auto_schema.registry.register_on_missing(component)
        return component.ref


# What a policy's rules look like, for the schema only: governance.policy.parse_rules validates them, as before.


@extend_schema_serializer(component_name="MetricGate")
class MetricGateSchema(serializers.Serializer):
    """The version's metric must compare so with the threshold (and have been measured on the dataset and split
    named, if any)."""

    metric = serializers.CharField(help_text="a key of the version's `metrics`")
    op = serializers.ChoiceField(choices=MetricOp.choices)
    threshold = serializers.FloatField(help_text="a finite number")
    dataset = serializers.CharField(required=False, allow_null=True, allow_blank=True, default=None)
    split = serializers.CharField(required=False, allow_null=True, allow_blank=True, default=None)


@extend_schema_serializer(component_name="StageSoak")
class StageSoakSchema(serializers.Serializer):
    """The version must first have served (been live) on a target of this stage for this many hours."""

    stage = serializers.CharField(allow_blank=True)
    # No maximum here: a policy stored before the bound may hold more (policy.parse_new_rules).
    hours = serializers.FloatField(min_value=0, help_text=f"at most {MAX_SOAK_HOURS} in a policy set now")


@extend_schema_serializer(component_name="PolicyRules")
class PolicyRulesSchema(serializers.Serializer):
    """A policy's rules. Each is optional and takes its default when left out: a policy is sent whole, so a rule
    left out of a change goes back to its default. Any other rule is refused (400 naming it)."""

    approvals_required = serializers.IntegerField(
        required=False, default=1, min_value=0, max_value=20, help_text="approvals a request needs (0: none)"
    )
    approver_groups = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        default=list,
        help_text="names of existing groups whose members may approve and reject (none: nobody may)",
    )
    requester_can_approve = serializers.BooleanField(
        required=False, default=False, help_text="the requester may review their own request"
    )
    required_card_sections = serializers.ListField(
        child=serializers.ChoiceField(choices=SECTIONS),
        required=False,
        default=list,
        help_text="model card sections the version's latest card must fill in",
    )
    metric_gates = MetricGateSchema(many=True, required=False, default=list)
    allowed_licenses = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        default=list,
        help_text="licenses the model card may state (none: any license)",
    )
    require_lineage = serializers.BooleanField(
        required=False, default=False, help_text="lineage names an input dataset version with a digest and a commit"
    )
    require_signature = serializers.BooleanField(
        required=False, default=False, help_text="the version's latest signature verifies"
    )
    require_verified_digest = serializers.BooleanField(
        required=False, default=False, help_text="every artifact file is stored under its sha256"
    )
    min_live_on_stage = StageSoakSchema(required=False, allow_null=True, default=None, help_text="null: no soak")
    request_expiry_hours = serializers.IntegerField(
        required=False,
        default=168,
        min_value=1,
        max_value=24 * 365,
        help_text="hours after which a pending request expires",
    )


@extend_schema_field(PolicyRulesSchema)
class PolicyRulesField(serializers.DictField):
    """A policy's rules as an object, validated by governance.policy (the schema names every rule)."""


class TargetCreateInput(StrictSerializer):
    name = serializers.CharField(max_length=64)
    kind = serializers.ChoiceField(choices=HostKind.choices)  # names TargetCreateInputKindEnum (ENUM_NAMES)
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
    policy = PolicyRulesField(
        required=False, default=dict, help_text="the target's policy; default: every rule's default"
    )


class PolicyOutput(serializers.Serializer):
    version = serializers.IntegerField()
    model = serializers.CharField(allow_null=True)
    rules = PolicyRulesField()
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


class PolicyOverrideOutput(PolicyOutput):
    """A model's override on the target: it replaces the target's policy outright for that model."""

    model = serializers.CharField(help_text="namespace/name of the model it applies to")


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
    state = EnumField(ReleaseState)
    live_at = serializers.DateTimeField(allow_null=True)


class TargetOutput(serializers.Serializer):
    name = serializers.CharField()
    kind = EnumField(HostKind)
    stage = serializers.CharField()
    config = serializers.DictField()
    credentials_ref = serializers.CharField()
    rollout = serializers.DictField()
    description = serializers.CharField()
    capabilities = serializers.ListField(child=serializers.CharField())
    policy = PolicyOutput()
    policy_overrides = PolicyOverrideOutput(
        many=True,
        help_text="the model overrides in force on the target, by model name: for its model an override replaces "
        "`policy` outright, however `policy` changes later. Only overrides of models the caller may view.",
    )
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
    decision = EnumField(Decision)
    comment = serializers.CharField()
    at = serializers.DateTimeField()
    counts = serializers.BooleanField(help_text="still bound to the current digest, card revision and policy")
    card_revision = serializers.IntegerField(allow_null=True)
    policy_version = serializers.IntegerField()


class PromotionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    state = serializers.ChoiceField(choices=PromotionState.choices)  # names PromotionOutputStateEnum (ENUM_NAMES)
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
    state = EnumField(PromotionState)
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

    def get_fields(self):
        # `from` is a Python keyword, so it cannot be declared as a class attribute.
        fields = super().get_fields()
        fields["from"] = serializers.IntegerField(
            required=False,
            allow_null=True,
            default=None,
            min_value=1,
            max_value=2**31 - 1,
            help_text="the release number desired when you read the target: if another release is desired now (a "
            "newer approval or rollback), nothing is rolled back and the answer is 409 changed_since_review; "
            "default: no such check",
        )
        return fields


class ReleaseOutput(HidesModel):
    number = serializers.IntegerField()
    target = serializers.CharField(source="target.name")
    model = serializers.CharField(source="version.model.__str__", allow_null=True)
    version = serializers.IntegerField(source="version.number", allow_null=True)
    digest = serializers.CharField(source="version.digest", allow_null=True)
    state = EnumField(ReleaseState)
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
