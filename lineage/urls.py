from django.urls import path

from lineage import views

urlpatterns = [
    path("lineage/", views.lineage_page, name="ui-lineage"),
]
