from django import template

from ..selectors import sees_training

register = template.Library()


@register.filter
def can_see_training(user) -> bool:
    """Whether the nav shows Training: researchers and admins of some project; annotators never."""
    return bool(user and user.is_authenticated and sees_training(user))


@register.filter
def metric(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
