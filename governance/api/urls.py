from django.urls import re_path

from governance.api import views

TARGET = r"targets/(?P<name>[^/]+)"

urlpatterns = [
    re_path(r"^targets/?$", views.TargetListView.as_view(), name="api-targets"),
    re_path(rf"^{TARGET}/?$", views.TargetDetailView.as_view(), name="api-target"),
    re_path(rf"^{TARGET}/policy/?$", views.TargetPolicyView.as_view(), name="api-target-policy"),
    re_path(
        rf"^{TARGET}/policies/(?P<namespace>[^/]+)/(?P<model_name>[^/]+)/?$",
        views.TargetPolicyView.as_view(),
        name="api-target-model-policy",
    ),
    re_path(rf"^{TARGET}/rollback/?$", views.TargetRollbackView.as_view(), name="api-target-rollback"),
    re_path(rf"^{TARGET}/releases/?$", views.TargetReleaseListView.as_view(), name="api-target-releases"),
    re_path(rf"^{TARGET}/served-at/?$", views.TargetServedAtView.as_view(), name="api-target-served-at"),
    re_path(r"^promotions/dry-run/?$", views.PromotionDryRunView.as_view(), name="api-promotion-dry-run"),
    re_path(r"^promotions/?$", views.PromotionListView.as_view(), name="api-promotions"),
    re_path(r"^promotions/(?P<pk>[0-9]{1,18})/?$", views.PromotionDetailView.as_view(), name="api-promotion"),
    re_path(
        r"^promotions/(?P<pk>[0-9]{1,18})/approve/?$",
        views.PromotionApproveView.as_view(),
        name="api-promotion-approve",
    ),
    re_path(
        r"^promotions/(?P<pk>[0-9]{1,18})/reject/?$", views.PromotionRejectView.as_view(), name="api-promotion-reject"
    ),
    re_path(
        r"^promotions/(?P<pk>[0-9]{1,18})/cancel/?$", views.PromotionCancelView.as_view(), name="api-promotion-cancel"
    ),
]

# Outgoing webhooks (docs/webhooks.md)
from governance.api import webhooks as webhook_views  # noqa: E402

urlpatterns += [
    re_path(r"^webhooks/?$", webhook_views.WebhookListView.as_view(), name="api-webhooks"),
    re_path(r"^webhooks/(?P<pk>[0-9]{1,18})/?$", webhook_views.WebhookDetailView.as_view(), name="api-webhook"),
    re_path(
        r"^webhooks/(?P<pk>[0-9]{1,18})/deliveries/?$",
        webhook_views.WebhookDeliveriesView.as_view(),
        name="api-webhook-deliveries",
    ),
    re_path(
        r"^webhooks/(?P<pk>[0-9]{1,18})/deliveries/(?P<delivery_id>[0-9]{1,18})/redeliver/?$",
        webhook_views.WebhookRedeliverView.as_view(),
        name="api-webhook-delivery-redeliver",
    ),
    re_path(
        r"^webhooks/(?P<pk>[0-9]{1,18})/rotate-secret/?$",
        webhook_views.WebhookRotateSecretView.as_view(),
        name="api-webhook-rotate-secret",
    ),
]
