from django.urls import path, re_path

from accounts.api import views

urlpatterns = [
    path("me", views.MeView.as_view(), name="api-me"),
    re_path(r"^tokens/?$", views.TokenListView.as_view(), name="api-tokens"),
    path("tokens/<int:token_id>/revoke", views.TokenRevokeView.as_view(), name="api-token-revoke"),
]
