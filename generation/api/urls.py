"""API v1 routes: the root (links), one router for the request and model viewsets, auth and staff views."""

from django.urls import path, re_path
from rest_framework.routers import DefaultRouter

from generation.api import root, views

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
# No ".json" suffix routes: the actions take no format argument (they answered 500), and JSON is
# the default anyway; "?format=" and Accept still choose the browsable API.
router.include_format_suffixes = False
router.register("comfyui/models", views.AvailableModelViewSet, basename="model")
router.register("comfyui/workflows", views.WorkflowViewSet, basename="workflow")
router.register("comfyui/inputs", views.InputImageViewSet, basename="input")
router.register("comfyui", views.GenerationViewSet, basename="generation")

urlpatterns = [
    path("", root.ApiRootView.as_view(), name="api-root"),
    path("comfyui/backends/", views.BackendsView.as_view(), name="backends"),
    path("comfyui/backends/events/", views.BackendEventsView.as_view(), name="backend-events"),
    path("auth/token/", views.TokenView.as_view(), name="auth-token"),
    path("auth/webhook-secret/", views.WebhookSecretView.as_view(), name="webhook-secret"),
    *router.urls,
    re_path(r"^[\s\S]*$", views.not_found, name="api-not-found"),  # [\s\S]: a newline in the path too
]
