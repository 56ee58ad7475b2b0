"""Who may do what outside a project: creating projects (the home page's button and ``POST /api/projects/``)."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from annotate.models import Role
from annotate.permissions import can_create_projects


def test_researchers_admins_superusers_and_holders_of_add_project_create_projects(make_project, make_member):
    User = get_user_model()
    project = make_project(n_items=0)
    annotator = make_member(project, "ann")
    researcher = make_member(project, "res", Role.RESEARCHER)
    admin = make_member(make_project(slug="other", n_items=0), "adm", Role.ADMIN)
    nobody = User.objects.create_user("nobody")
    holder = User.objects.create_user("holder")
    holder.user_permissions.add(Permission.objects.get(content_type__app_label="annotate", codename="add_project"))
    root = User.objects.create_superuser("root")
    users = [annotator, nobody, researcher, admin, User.objects.get(pk=holder.pk), root]
    assert [can_create_projects(user) for user in users] == [False, False, True, True, True, True]
    make_member(project, "ann", Role.RESEARCHER)  # a role in any one project is enough
    assert can_create_projects(annotator)
