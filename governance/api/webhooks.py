"""REST API for outgoing webhooks (docs/webhooks.md). Platform administrators only."""

import json

from django.utils import timezone
from django.utils.cache import patch_cache_control
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from accounts import scopes
from accounts.api.base import GovernedAPIView
from accounts.permissions import InsufficientScope, token_scopes
from core.api import StrictSerializer, location
from core.errors import Forbidden, NotFound
from core.openapi import etag_header, if_match_header
from core.pagination import cursor, paginated
from governance import webhooks
from governance.webhook_models import DeliveryState, WebhookEndpoint

# --- serializers ------------------------------------------------------------------------------

EVENT_TYPES_HELP = (
    "event types to receive: "
    + ", ".join(webhooks.EVENT_TYPES)
    + "; a group wildcard such as 'promotion.*'; or '*' for all"
)


class WebhookCreateInput(StrictSerializer):
    name = serializers.CharField(max_length=100)
    url = serializers.CharField(max_length=2000, help_text="http(s) URL that receives signed POSTs")
    event_types = serializers.ListField(
        child=serializers.CharField(max_length=100), min_length=1, max_length=50, help_text=EVENT_TYPES_HELP
    )
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)
    active = serializers.BooleanField(required=False, default=True)


class WebhookUpdateInput(StrictSerializer):
    name = serializers.CharField(max_length=100, required=False)
    url = serializers.CharField(max_length=2000, required=False)
    event_types = serializers.ListField(
        child=serializers.CharField(max_length=100),
        min_length=1,
        max_length=50,
        required=False,
        help_text=EVENT_TYPES_HELP,
    )
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    active = serializers.BooleanField(required=False)


class WebhookRotateSecretInput(StrictSerializer):
    grace_period_seconds = serializers.IntegerField(
        required=False,
        default=webhooks.ROTATION_GRACE_SECONDS,
        min_value=0,
        max_value=webhooks.ROTATION_GRACE_SECONDS,
        help_text="how long deliveries are also signed with the previous secret (default and most: 24 h); "
        "0 ends the previous secret at once",
    )


class WebhookOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    url = serializers.CharField(help_text="in full (it may carry the receiver's token); audit events hold it redacted")
    event_types = serializers.ListField(child=serializers.CharField())
    active = serializers.BooleanField()
    description = serializers.CharField()
    previous_secret_expires_at = serializers.DateTimeField(
        allow_null=True,
        help_text="until when deliveries also carry the signature of the secret before the last rotation; "
        "null when only the current secret signs",
    )
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def to_representation(self, endpoint):
        data = super().to_representation(endpoint)
        ends = endpoint.previous_secret_expires_at
        if ends is not None and ends <= timezone.now():  # over, not yet dropped by the dispatcher
            data["previous_secret_expires_at"] = None
        return data


class WebhookCreatedOutput(WebhookOutput):
    secret = serializers.CharField(
        help_text="whsec_<base64> signing secret. Shown only in this response: store it with the receiver."
    )


def with_secret(endpoint: WebhookEndpoint, secret: str, status_code: int) -> Response:
    response = Response(WebhookOutput(endpoint).data | {"secret": secret}, status=status_code)
    patch_cache_control(response, no_store=True)  # the one answer holding the secret: no cache keeps a copy
    return response


class AttemptOutput(serializers.Serializer):
    number = serializers.IntegerField()
    at = serializers.DateTimeField()
    duration_ms = serializers.IntegerField()
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()
    response_excerpt = serializers.CharField()


class DeliveryOutput(serializers.Serializer):
    id = serializers.IntegerField()
    webhook_id = serializers.CharField(help_text="the webhook-id header; the same on every attempt")
    event_seq = serializers.IntegerField(help_text="the audit event's seq")
    event_type = serializers.CharField()
    state = serializers.ChoiceField(choices=DeliveryState.choices)
    attempts = serializers.IntegerField(
        help_text="attempts since it was queued (created, or redelivered); attempt_log keeps every attempt"
    )
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    last_status = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    delivered_at = serializers.DateTimeField(allow_null=True)
    payload = serializers.JSONField(source="body", help_text="the body as sent")
    attempt_log = AttemptOutput(many=True)

    def to_representation(self, delivery):
        data = super().to_representation(delivery)
        data["payload"] = json.loads(delivery.body)  # stored as the bytes sent (signed); shown as the JSON it is
        if delivery.state != DeliveryState.PENDING:
            data["next_attempt_at"] = None
        return data


class DeliveryListQuery(StrictSerializer):
    state = serializers.ChoiceField(choices=DeliveryState.choices, required=False)
    event_type = serializers.CharField(required=False, max_length=100)
    cursor = serializers.CharField(required=False)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=500)


# --- views --------------------------------------------------------------------------------------


class WebhookBase(GovernedAPIView):
    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # authentication and the method's own token scope first
        # A delivery payload is an audit event and a subscription a live copy of the audit log: a token
        # reaches any of it only with the scope the audit log itself needs, on top of the method's scope.
        granted = token_scopes(request)
        if granted is not None and scopes.AUDIT_READ not in granted and hasattr(self, request.method.lower()):
            raise InsufficientScope(
                f"This API token lacks the scope '{scopes.AUDIT_READ}' needed for {request.method} "
                f"{request.path} (webhooks carry audit events). Its scopes: {', '.join(granted)}."
            )
        if not webhooks.may_manage(request.user):
            raise Forbidden(
                f"Managing webhooks needs the {webhooks.MANAGE_PERMISSION} and {webhooks.AUDIT_PERMISSION} "
                "permissions (platform administrators): a webhook receives the audit log of every object."
            )

    def endpoint(self, pk: int) -> WebhookEndpoint:
        endpoint = WebhookEndpoint.objects.select_related("created_by").filter(pk=pk).first()
        if endpoint is None:
            raise NotFound(f"No webhook {pk}.")
        return endpoint


class WebhookListView(WebhookBase):
    required_scopes = {"GET": scopes.READ, "POST": scopes.DEPLOYMENTS_WRITE}
    pagination_class = cursor("-id")

    @extend_schema(
        operation_id="webhooks_list",
        responses=paginated(WebhookOutput),
        summary="List webhook endpoints",
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(WebhookEndpoint.objects.select_related("created_by"), request, self)
        return paginator.get_paginated_response(WebhookOutput(page, many=True).data)

    @extend_schema(
        request=WebhookCreateInput,
        responses={201: WebhookCreatedOutput},
        summary="Create a webhook endpoint; the response carries its signing secret, shown only once",
    )
    def post(self, request):
        data = WebhookCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint, secret = webhooks.endpoint_create(actor=request.user, **data.validated_data)
        response = with_secret(endpoint, secret, status.HTTP_201_CREATED)
        response["Location"] = location("api-webhook", pk=endpoint.pk)
        return response


class WebhookDetailView(WebhookBase):
    required_scopes = {"GET": scopes.READ, "PATCH": scopes.DEPLOYMENTS_WRITE, "DELETE": scopes.DEPLOYMENTS_WRITE}

    @extend_schema(
        responses=WebhookOutput,
        parameters=[etag_header("the endpoint")],
        summary="Get a webhook endpoint (never its secret)",
    )
    def get(self, request, pk):
        return self.shown(self.endpoint(pk))

    @extend_schema(
        request=WebhookUpdateInput,
        responses={
            200: WebhookOutput,
            412: OpenApiResponse(description="precondition_failed: If-Match names another state of the endpoint"),
        },
        parameters=[if_match_header("the endpoint"), etag_header("the endpoint")],
        summary="Change a webhook endpoint's name, url, event types, description or active flag",
    )
    def patch(self, request, pk):
        endpoint = self.endpoint(pk)
        data = WebhookUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        if_match = request.headers.get("If-Match")
        return self.shown(
            webhooks.endpoint_update(actor=request.user, endpoint=endpoint, if_match=if_match, **data.validated_data)
        )

    @staticmethod
    def shown(endpoint) -> Response:
        return Response(WebhookOutput(endpoint).data, headers={"ETag": webhooks.endpoint_etag(endpoint)})

    @extend_schema(
        responses={204: OpenApiResponse(description="deleted, with its deliveries")},
        summary="Delete a webhook endpoint and its delivery log",
    )
    def delete(self, request, pk):
        webhooks.endpoint_delete(actor=request.user, endpoint=self.endpoint(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookRotateSecretView(WebhookBase):
    required_scopes = {"POST": scopes.DEPLOYMENTS_WRITE}

    @extend_schema(
        request=WebhookRotateSecretInput,
        responses={200: WebhookCreatedOutput},
        summary="Rotate a webhook endpoint's signing secret; the response carries the new one, shown only once",
        description="During the grace period (grace_period_seconds, default 24 h) every delivery carries two "
        "signatures, the new secret's first, so the receiver can switch at its own pace; after it, only the new "
        "one. Rotating again during a grace period ends it.",
    )
    def post(self, request, pk):
        endpoint = self.endpoint(pk)
        data = WebhookRotateSecretInput(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint, secret = webhooks.endpoint_rotate_secret(actor=request.user, endpoint=endpoint, **data.validated_data)
        return with_secret(endpoint, secret, status.HTTP_200_OK)


class WebhookDeliveriesView(WebhookBase):
    pagination_class = cursor("-id")
    query_serializers = {"GET": DeliveryListQuery}

    @extend_schema(
        responses=paginated(DeliveryOutput),
        operation_id="webhooks_deliveries_list",
        summary="The delivery log of a webhook endpoint (newest first), with every attempt",
    )
    def get(self, request, pk):
        q = self.query()
        qs = webhooks.deliveries_of(self.endpoint(pk))
        if q.get("state"):
            qs = qs.filter(state=q["state"])
        if q.get("event_type"):
            qs = qs.filter(event_type=q["event_type"])
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(qs, request, self)
        return paginator.get_paginated_response(DeliveryOutput(page, many=True).data)


class WebhookRedeliverView(WebhookBase):
    required_scopes = {"POST": scopes.DEPLOYMENTS_WRITE}

    @extend_schema(
        request=None,
        responses={
            202: DeliveryOutput,
            409: OpenApiResponse(
                description="delivery_pending (still being retried), already_delivered, or endpoint_inactive "
                "(activate the endpoint first)"
            ),
        },
        summary="Send a failed delivery again",
        description="`delivery_id`: the `id` of a delivery in the endpoint's delivery log. The delivery goes back "
        "to pending, due now, with a fresh WEBHOOK_MAX_ATTEMPTS, and is sent with the same body and webhook-id "
        "(receivers de-duplicate on it), signed afresh. Only a failed delivery, of an active endpoint. Audited as "
        "webhook.redelivered.",
    )
    def post(self, request, pk, delivery_id):
        delivery = webhooks.delivery_redeliver(
            actor=request.user, endpoint=self.endpoint(pk), delivery_id=int(delivery_id)
        )
        return Response(DeliveryOutput(delivery).data, status=status.HTTP_202_ACCEPTED)
