from django.urls import re_path

from lineage.api import views

urlpatterns = [
    re_path(r"^lineage/?$", views.LineageIngestView.as_view(), name="api-lineage"),
    re_path(r"^lineage/graph/?$", views.LineageGraphView.as_view(), name="api-lineage-graph"),
    re_path(r"^lineage/export/?$", views.LineageExportView.as_view(), name="api-lineage-export"),
    re_path(r"^lineage/trail/?$", views.LineageTrailView.as_view(), name="api-lineage-trail"),
    re_path(r"^lineage/links/?$", views.LineageLinkView.as_view(), name="api-lineage-links"),
]
