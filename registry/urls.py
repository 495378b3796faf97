from django.urls import path

from registry import views

urlpatterns = [
    path("models/<str:namespace>/<str:name>/", views.model_detail, name="ui-model"),
    path("models/<str:namespace>/<str:name>/versions/<int:number>/", views.version_detail, name="ui-version"),
]
