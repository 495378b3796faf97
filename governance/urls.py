from django.urls import path

from governance import views

urlpatterns = [
    path("reviews/", views.review_queue, name="ui-reviews"),
    path("promotions/<int:pk>/", views.promotion_detail, name="ui-promotion"),
    path("promotions/<int:pk>/review/", views.promotion_review, name="ui-promotion-review"),
    path("promotions/<int:pk>/cancel/", views.promotion_cancel, name="ui-promotion-cancel"),
    path("targets/", views.target_list, name="ui-targets"),
    path("targets/<str:name>/", views.target_detail, name="ui-target"),
    path("targets/<str:name>/rollback/", views.target_rollback, name="ui-target-rollback"),
]
