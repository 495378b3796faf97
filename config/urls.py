from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from core import metrics
from core import views as core_views
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
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("registry.urls")),
    path("", include("governance.urls")),
    path("", include("lineage.urls")),
    path("", registry_views.home, name="home"),
]

handler404 = "core.views.not_found"
handler500 = "core.views.server_error"
