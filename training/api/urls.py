from django.urls import path

from . import views

urlpatterns = [
    path("training-runs/", views.runs, name="api-training-runs"),
    path("training-runs/<int:run_id>/", views.run_detail, name="api-training-run"),
    path("training-runs/<int:run_id>/cancel/", views.run_cancel, name="api-training-cancel"),
    path("training-runs/<int:run_id>/next-round/", views.run_next_round, name="api-training-next-round"),
    path("training-runs/<int:run_id>/send-kept/", views.run_send_kept, name="api-training-send-kept"),
    path("training-runs/<int:run_id>/human-eval/", views.run_human_eval, name="api-training-human-eval"),
    path("training-rounds/<slug:slug>/", views.project_rounds, name="api-training-rounds"),
    path("models/", views.models, name="api-models"),
    path("models/score/", views.combined_score, name="api-models-score"),
    path("models/<int:artifact_id>/", views.model_detail, name="api-model"),
    path("models/<int:artifact_id>/score/", views.model_score, name="api-model-score"),
]
