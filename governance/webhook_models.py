"""Outgoing webhooks: endpoints, one delivery per (endpoint, audit event), and every attempt.

The audit log is the outbox: `WebhookCursor` remembers the last audit `seq` the dispatcher has
turned into deliveries. Imported at the end of governance/models.py so Django sees these models
as part of the governance app.
"""

from django.conf import settings
from django.db import models


class WebhookEndpoint(models.Model):
    """A receiver URL with its signing secret, both encrypted at rest (see governance.webhooks.secret_box)."""

    name = models.CharField(max_length=100, unique=True)
    # Fernet token of the URL, which may carry a credential (?token=..., a Slack-style path). Read it as `url`;
    # audit events and logs get governance.webhooks.redact_url() of it.
    url_encrypted = models.TextField()
    # Fernet token of the "whsec_..." secret. Returned only by creation and rotation, never audited.
    secret_encrypted = models.TextField()
    # During a rotation's grace period: the secret before it (Fernet token), which also signs deliveries until
    # `previous_secret_expires_at` (the database's clock); the dispatcher clears both once that has passed.
    previous_secret_encrypted = models.TextField(blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    event_types = models.JSONField(default=list)  # ["promotion.approved", "release.*", "*"]
    active = models.BooleanField(default=True)
    description = models.TextField(blank=True)
    # The audit seq of this endpoint's creation event: it receives only events that came after it.
    created_seq = models.BigIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        permissions = [("manage_webhooks", "Can create, change and delete outgoing webhooks and see deliveries")]

    def __str__(self) -> str:
        return self.name

    @property
    def url(self) -> str:
        """The receiver URL in full, for those who manage the endpoint (and the delivery). Empty when it cannot be
        decrypted (SECRET_KEY changed without SECRET_KEY_FALLBACKS): a listing still answers; set it again."""
        from cryptography.fernet import InvalidToken

        from governance.webhooks import decrypt_url

        try:
            return decrypt_url(self.url_encrypted)
        except InvalidToken:
            return ""


class DeliveryState(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(models.Model):
    """One audit event for one endpoint. `body` is fixed at creation, so every retry sends the same bytes
    under the same `webhook_id` (receivers de-duplicate on it); only the timestamp and signature change."""

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event_seq = models.BigIntegerField()
    event_type = models.CharField(max_length=100)
    webhook_id = models.CharField(max_length=64, unique=True)
    body = models.TextField()
    state = models.CharField(max_length=20, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # When the next attempt may start. While an attempt runs, it is pushed forward by a lease, so a
    # duplicate task (or the sweeper) cannot start a second attempt in parallel.
    next_attempt_at = models.DateTimeField()
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "event_seq"], name="governance_webhookdelivery_once"),
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="governance_webhook_due_idx")]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event_type} #{self.event_seq} -> {self.endpoint_id} ({self.state})"


class WebhookAttempt(models.Model):
    """The delivery log: one row per HTTP attempt, successful or not."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    response_excerpt = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["delivery_id", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="governance_webhookattempt_unique_number"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}: {self.status_code or self.error}"


class WebhookCursor(models.Model):
    """The single row holding the last audit seq turned into deliveries. Dispatchers lock it."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_seq = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"webhooks dispatched up to #{self.last_seq}"


__all__ = ["DeliveryState", "WebhookAttempt", "WebhookCursor", "WebhookDelivery", "WebhookEndpoint"]
