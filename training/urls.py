from django.urls import path

from . import views

urlpatterns = [
    path("", views.runs, name="training"),
    path("new/", views.run_new, name="training-new"),
    path("runs/<int:run_id>/", views.run_detail, name="training-run"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="training-cancel"),
    path("runs/<int:run_id>/retry/", views.run_retry, name="training-retry"),
    path("runs/<int:run_id>/next-round/", views.run_next_round, name="training-next-round"),
    path("runs/<int:run_id>/send-kept/", views.run_send_kept, name="training-send-kept"),
    path("runs/<int:run_id>/human-eval/", views.run_human_eval, name="training-human-eval-create"),
    path("runs/<int:run_id>/human-eval/results/", views.human_eval, name="training-human-eval"),
    path("projects/<slug:slug>/rounds/", views.project_rounds, name="training-rounds"),
    path("models/", views.models, name="training-models"),
    path("models/register/", views.model_register, name="training-model-register"),
    path("models/<int:artifact_id>/", views.model_detail, name="training-model"),
]
