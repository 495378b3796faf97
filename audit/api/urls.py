from django.urls import path

from audit.api import views

urlpatterns = [
    path("audit/events", views.AuditEventExportView.as_view(), name="api-audit-events"),
    path("audit/head", views.AuditHeadView.as_view(), name="api-audit-head"),
]
