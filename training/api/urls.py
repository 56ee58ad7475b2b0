from django.urls import path

from . import views

urlpatterns = [
    path("training-runs/", views.runs, name="api-training-runs"),
    path("training-runs/<int:run_id>/", views.run_detail, name="api-training-run"),
    path("training-runs/<int:run_id>/cancel/", views.run_cancel, name="api-training-cancel"),
    path("models/", views.models, name="api-models"),
    path("models/score/", views.combined_score, name="api-models-score"),
    path("models/<int:artifact_id>/", views.model_detail, name="api-model"),
    path("models/<int:artifact_id>/score/", views.model_score, name="api-model-score"),
]
