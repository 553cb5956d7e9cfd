"""Who may read the OpenAPI schema and the interactive docs (``API_DOCS_PUBLIC``).

In development anyone may; in production (the default when ``DEBUG`` is off) only logged-in users
— the schema maps every route and field, which an anonymous visitor has no need for.
"""

from functools import wraps

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from rest_framework.permissions import BasePermission


class DocsAccess(BasePermission):
    """``SPECTACULAR_SETTINGS["SERVE_PERMISSIONS"]``: anyone when public, else authenticated users."""

    def has_permission(self, request, view):
        return settings.API_DOCS_PUBLIC or bool(request.user and request.user.is_authenticated)


def login_unless_public(view):
    """The docs page sends a visitor who is not logged in to the login page (not a bare 401)."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not settings.API_DOCS_PUBLIC and not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapped
