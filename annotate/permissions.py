"""Who may do what in a project. Every view and API endpoint goes through :func:`require_role`.

Non-members get a 404, not a 403, so a project's existence does not leak; members whose role is too low
get a 403. Superusers act as admins of every project.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404

from .models import Membership, Project, Role


def membership_for(user, project: Project) -> Membership | None:
    if not user or not user.is_authenticated:
        return None
    membership = Membership.objects.filter(project=project, user=user).first()
    if membership is None and user.is_superuser:
        return Membership(project=project, user=user, role=Role.ADMIN)
    return membership


def require_role(user, slug: str, role: str = Role.ANNOTATOR) -> tuple[Project, Membership]:
    """The project and the user's membership, if the user has at least ``role`` in it."""
    project = Project.objects.filter(slug=slug).first()
    membership = membership_for(user, project) if project else None
    if membership is None:
        raise Http404("No such project.")
    if not membership.has_role(role):
        raise PermissionDenied(f"This needs the {role} role in {project.slug}.")
    return project, membership


def can_create_projects(user) -> bool:
    """Superusers, holders of annotate.add_project, and researchers or admins of any project."""
    return (
        user.is_superuser
        or user.has_perm("annotate.add_project")
        or Membership.objects.filter(user=user, role__in=[Role.RESEARCHER, Role.ADMIN]).exists()
    )


def visible_projects(user):
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user).distinct()
