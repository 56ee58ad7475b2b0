from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/new/", views.project_new, name="project-new"),
    path("p/<slug:slug>/", views.project_detail, name="project"),
    path("p/<slug:slug>/annotate/", views.annotate, name="annotate"),
    path("p/<slug:slug>/annotate/previous/", views.previous, name="annotate-previous"),
    path("p/<slug:slug>/tasks/<int:task_id>/judge/", views.judge, name="judge"),
    path("p/<slug:slug>/tasks/<int:task_id>/skip/", views.skip, name="skip"),
    path("p/<slug:slug>/tasks/<int:task_id>/flag/", views.flag, name="flag"),
    path("p/<slug:slug>/import/", views.import_items, name="import"),
    path("p/<slug:slug>/export/", views.export, name="export"),
    path("p/<slug:slug>/snapshots/", views.snapshot, name="snapshot"),
    path("p/<slug:slug>/members/", views.members, name="members"),
    path("p/<slug:slug>/members/search/", views.member_search, name="member-search"),
    path("p/<slug:slug>/settings/", views.project_settings, name="project-settings"),
    path("p/<slug:slug>/dashboard/", views.project_dashboard, name="dashboard"),
    path("p/<slug:slug>/dashboard/reinstate/", views.reinstate_member, name="reinstate"),
    path("p/<slug:slug>/items/", views.items, name="items"),
    path("p/<slug:slug>/items/more-votes/", views.more_votes, name="more-votes"),
    path("p/<slug:slug>/items/<int:item_id>/", views.item_detail, name="item"),
    path("p/<slug:slug>/items/<int:item_id>/adjudicate/", views.adjudicate, name="adjudicate"),
    path("p/<slug:slug>/queue/", views.queue, name="queue"),
    path("p/<slug:slug>/queue/<str:kind>/<int:report_id>/", views.resolve_report, name="resolve-report"),
    path("p/<slug:slug>/judges/", views.judges, name="judges"),
    path("p/<slug:slug>/judges/<slug:name>/run/", views.judge_run, name="judge-run"),
]
