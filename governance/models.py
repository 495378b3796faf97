from django.conf import settings
from django.db import models
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from core.etags import etag_of
from governance.choices import Decision, HostKind, PromotionState, ReleaseState
from registry.models import ModelVersion, RegisteredModel, slug_validator


class DeploymentTarget(models.Model):
    """Where versions serve: a host kind plus its configuration. Credentials are a reference only."""

    name = models.CharField(max_length=64, unique=True, validators=[slug_validator])
    kind = models.CharField(max_length=20, choices=HostKind.choices)
    stage = models.CharField(max_length=64, validators=[slug_validator])
    config = models.JSONField(default=dict)
    # "env:VAR_NAME" or "secret:name": where the worker finds the credential, never the value.
    credentials_ref = models.CharField(max_length=200, blank=True)
    # Canary steps for hosts that split traffic (governance.rollout); {} = all traffic at once.
    rollout = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # Desired state: the reconciler makes the host serve `desired_release`; `last_good_release` is
    # the newest release that was fully live, the default rollback destination.
    desired_release = models.ForeignKey("Release", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    last_good_release = models.ForeignKey("Release", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # A reconciler claims the target with a lease (conditional UPDATE), so at most one converges it
    # at a time; a crashed worker's lease simply runs out.
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        permissions = [
            ("deploy_deploymenttarget", "Can start, retry and roll back releases on the target"),
            ("manage_deploymenttarget", "Can change the target's configuration and policy"),
        ]

    def __str__(self) -> str:
        return self.name


class DeploymentTargetUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(DeploymentTarget, on_delete=models.CASCADE)


class DeploymentTargetGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(DeploymentTarget, on_delete=models.CASCADE)


class Policy(models.Model):
    """One version of the rules for a target (or, with `model`, an override for one model there).

    Append-only: a change is a new row with the next version number, so approvals can bind to the
    exact rules they were given under.
    """

    target = models.ForeignKey(DeploymentTarget, on_delete=models.PROTECT, related_name="policies")
    model = models.ForeignKey(RegisteredModel, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    version = models.PositiveIntegerField()
    rules = models.JSONField()  # governance.policy.PolicyRules as a dict
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["target", "model", "version"], name="governance_policy_unique_version"),
            models.UniqueConstraint(
                fields=["target", "version"],
                condition=models.Q(model__isnull=True),
                name="governance_policy_unique_target_version",
            ),
        ]
        verbose_name_plural = "policies"

    def __str__(self) -> str:
        scope = f"{self.target}" + (f" for {self.model}" if self.model_id else "")
        return f"policy v{self.version} of {scope}"

    @property
    def etag(self) -> str:
        """A policy never changes (a change is a new row) but for created_by, which a deleted user's SET_NULL clears:
        its id and that tell it apart. core.etags."""
        return etag_of({"policy": self.pk, "by": self.created_by_id})


class PromotionRequest(models.Model):
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="promotion_requests")
    target = models.ForeignKey(DeploymentTarget, on_delete=models.PROTECT, related_name="promotion_requests")
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(max_length=20, choices=PromotionState.choices, default=PromotionState.PENDING)
    reason = models.TextField(blank=True)
    # What a managed host will deploy (Replicate version, HF commit, Modal tag), fixed when the request is made:
    # the version's `host_revision` tag stays editable, and reviewers approve this, not whatever it says later.
    host_revision = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["state", "target", "created_at"], name="governance_promo_queue_idx"),
            models.Index(fields=["version", "target", "state"], name="governance_promo_version_idx"),
        ]

    def __str__(self) -> str:
        return f"promotion #{self.pk}: {self.version} -> {self.target}"


class Approval(models.Model):
    """A reviewer's decision, bound to what they saw: digest, card revision and policy version.

    Append-only. If the card or the policy changes afterwards, this approval no longer counts.
    """

    request = models.ForeignKey(PromotionRequest, on_delete=models.PROTECT, related_name="approvals")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True)
    digest = models.CharField(max_length=71)
    card_revision = models.PositiveIntegerField(null=True, blank=True)
    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.decision} by {self.user_id} on #{self.request_id}"


class Release(models.Model):
    """A version on a target: the desired state the deployment engine converges the host to."""

    target = models.ForeignKey(DeploymentTarget, on_delete=models.PROTECT, related_name="releases")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="releases")
    number = models.PositiveIntegerField()
    promotion = models.ForeignKey(
        PromotionRequest, null=True, blank=True, on_delete=models.PROTECT, related_name="releases"
    )
    state = models.CharField(max_length=20, choices=ReleaseState.choices, default=ReleaseState.PENDING)
    traffic_percent = models.PositiveSmallIntegerField(default=100)
    # A canary step in progress: when the release took `traffic_percent`, and the host's counters then.
    step_started_at = models.DateTimeField(null=True, blank=True)
    step_baseline = models.JSONField(null=True, blank=True)
    deploying_since = models.DateTimeField(null=True, blank=True)  # DEPLOY_TIMEOUT_SECONDS counts from it
    endpoint_url = models.CharField(max_length=500, blank=True)
    host_revision = models.TextField(blank=True)  # its promotion's: what it deploys, a rollback included
    host_release_id = models.CharField(max_length=200, blank=True)
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    live_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["target", "number"], name="governance_release_unique_number")]
        indexes = [models.Index(fields=["version", "state"], name="governance_release_version_idx")]

    def __str__(self) -> str:
        return f"{self.target} release {self.number} ({self.version})"


class ServingPeriod(models.Model):
    """When a release served (all of) a target's traffic: answers "what served X at time T"."""

    target = models.ForeignKey(DeploymentTarget, on_delete=models.PROTECT, related_name="serving_periods")
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="serving_periods")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["target", "started_at"], name="governance_serving_time_idx")]

    def __str__(self) -> str:
        return f"{self.release} from {self.started_at:%Y-%m-%d %H:%M}"


# Outgoing webhooks live in their own module; imported here so Django registers them with this app.
from governance.webhook_models import *  # noqa: E402, F403, I001
