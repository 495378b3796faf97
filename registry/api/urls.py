from django.urls import re_path

from registry.api import cards, signatures, uploads, views

MODEL = r"models/(?P<namespace>[^/]+)/(?P<name>[^/]+)"
VERSION = rf"{MODEL}/versions/(?P<number>[0-9]+)"

urlpatterns = [
    re_path(r"^models/?$", views.ModelListView.as_view(), name="api-models"),
    re_path(rf"^{MODEL}/?$", views.ModelDetailView.as_view(), name="api-model"),
    re_path(rf"^{MODEL}/versions/?$", views.VersionListView.as_view(), name="api-versions"),
    re_path(rf"^{VERSION}/?$", views.VersionDetailView.as_view(), name="api-version"),
    re_path(rf"^{VERSION}/card/?$", cards.CardView.as_view(), name="api-card"),
    re_path(rf"^{VERSION}/card/revisions/?$", cards.CardRevisionListView.as_view(), name="api-card-revisions"),
    re_path(rf"^{VERSION}/signature/?$", signatures.SignatureView.as_view(), name="api-version-signature"),
    re_path(rf"^{MODEL}/artifacts/(?P<digest>[^/]+)$", views.ArtifactUploadView.as_view(), name="api-artifact"),
    re_path(rf"^{MODEL}/uploads/?$", uploads.UploadCreateView.as_view(), name="api-uploads"),
    re_path(
        rf"^{MODEL}/uploads/(?P<upload_id>[^/]+)/complete/?$",
        uploads.UploadCompleteView.as_view(),
        name="api-upload-complete",
    ),
    re_path(rf"^{MODEL}/aliases/?$", views.AliasListView.as_view(), name="api-aliases"),
    re_path(rf"^{MODEL}/aliases/(?P<alias>[^/]+)$", views.AliasDetailView.as_view(), name="api-alias"),
]
