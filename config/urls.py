from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularSwaggerSplitView

from core import metrics
from core import views as core_views
from core.api import slash_optional
from core.openapi import SchemaView
from registry import views as registry_views

api_v1 = [
    path("", include("accounts.api.urls")),
    path("", include("audit.api.urls")),
    path("", include("registry.api.urls")),
    path("", include("governance.api.urls")),
    path("", include("lineage.api.urls")),
]

urlpatterns = [
    path("healthz", core_views.healthz, name="healthz"),
    path("readyz", core_views.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    # Every API route answers with or without its trailing slash; the schema lists the spelling written here.
    *slash_optional(
        [
            path("api/v1/", include(api_v1)),
            path("api/schema/", SchemaView.as_view(), name="schema"),
            path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"),
        ]
    ),
    re_path(r"^api/", core_views.api_not_found, name="api-not-found"),  # the JSON 404, whatever DEBUG is
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("registry.urls")),
    path("", include("governance.urls")),
    path("", include("lineage.urls")),
    path("", registry_views.home, name="home"),
]

# With DEBUG off Django answers errors raised outside a view (a disallowed Host: 400) through these: JSON under /api/.
handler400 = "core.views.bad_request"
handler403 = "core.views.permission_denied"
handler404 = "core.views.not_found"
handler500 = "core.views.server_error"
