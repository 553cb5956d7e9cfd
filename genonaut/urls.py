"""Top-level routes: the UI, the API (v1), the schema and docs, admin, health, metrics."""

from django.contrib import admin
from django.contrib.auth.views import LoginView
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from generation.api.views import not_found as api_not_found
from generation.login_guard import GuardedAdminAuthenticationForm, GuardedAuthenticationForm
from generation.metrics import metrics_view
from genonaut import api_docs, health

# both login pages say when the login guard refused (generation/login_guard.py)
admin.site.login_form = GuardedAdminAuthenticationForm
# the app list sidebar (the index page and breadcrumbs remain) would take a quarter of a 1366 px
# window, leaving list pages too narrow for their columns
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", LoginView.as_view(authentication_form=GuardedAuthenticationForm), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),  # login/logout for the UI (settings.LOGIN_URL)
    path("api/v1/", include("generation.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # the split view serves its init script as a file: the page needs no inline script (CSP)
    path("api/docs/", api_docs.login_unless_public(SpectacularSwaggerSplitView.as_view(url_name="schema")),
         name="api-docs"),
    re_path(r"^api[\s\S]*$", api_not_found),  # /api.json, /api/v1.json, /api/v2/…: the API's JSON 404
    path("healthz", health.liveness, name="healthz"),
    path("readyz", health.readiness, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("", include("generation.urls")),
]
