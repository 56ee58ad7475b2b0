from django.urls import path

from . import views

urlpatterns = [
    path("", views.runs, name="training"),
    path("new/", views.run_new, name="training-new"),
    path("runs/<int:run_id>/", views.run_detail, name="training-run"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="training-cancel"),
    path("runs/<int:run_id>/retry/", views.run_retry, name="training-retry"),
    path("models/", views.models, name="training-models"),
    path("models/<int:artifact_id>/", views.model_detail, name="training-model"),
]
