from django.urls import path

from . import views

urlpatterns = [
    path("projects/", views.projects, name="api-projects"),
    path("projects/<slug:slug>/", views.project_detail, name="api-project"),
    path("projects/<slug:slug>/next-task/", views.next_task, name="api-next-task"),
    path("projects/<slug:slug>/items/", views.project_items, name="api-items"),
    path("projects/<slug:slug>/agreement/", views.project_agreement, name="api-agreement"),
    path("projects/<slug:slug>/members/", views.project_members, name="api-members"),
    path("projects/<slug:slug>/members/<str:username>/", views.project_member, name="api-member"),
    path(
        "projects/<slug:slug>/members/<str:username>/reinstate/",
        views.project_member_reinstate,
        name="api-member-reinstate",
    ),
    path("projects/<slug:slug>/exports/", views.project_exports, name="api-exports"),
    path("exports/<int:snapshot_id>/", views.export_detail, name="api-export"),
    path("exports/<int:snapshot_id>/files/<str:split>/", views.export_file, name="api-export-file"),
    path("exports/<int:snapshot_id>/card/", views.export_card, name="api-export-card"),
    path("projects/<slug:slug>/items/more-votes/", views.project_more_votes, name="api-more-votes"),
    path("projects/<slug:slug>/flags/", views.project_flags, name="api-flags-queue"),
    path("flags/<int:flag_id>/resolution/", views.flag_resolution, name="api-flag-resolution"),
    path("items/<int:item_id>/", views.item_detail, name="api-item"),
    path("items/<int:item_id>/adjudication/", views.item_adjudication, name="api-adjudication"),
    path("tasks/<int:task_id>/", views.task_detail, name="api-task"),
    path("tasks/<int:task_id>/judgments/", views.task_judgments, name="api-judgments"),
    path("tasks/<int:task_id>/skip/", views.task_skip, name="api-skip"),
    path("tasks/<int:task_id>/flags/", views.task_flags, name="api-flags"),
    path("projects/<slug:slug>/judges/", views.project_judges, name="api-judges"),
    path("projects/<slug:slug>/judges/<slug:name>/runs/", views.project_judge_runs, name="api-judge-runs"),
]
