"""UI routes: the server-rendered pages (mounted at the site root)."""

from django.urls import path

from generation import views

urlpatterns = [
    path("", views.generate, name="generate"),
    path("history/", views.history, name="history"),
    path("history/tiles/", views.history_tiles, name="history-tiles"),
    path("models/", views.models_page, name="models"),
    path("backends/", views.backends_page, name="backends-page"),
    path("requests/<uuid:request_id>/", views.request_detail, name="request-detail"),
    path("requests/<uuid:request_id>/status/", views.request_status, name="request-status"),
    path("requests/<uuid:request_id>/cancel/", views.cancel, name="request-cancel"),
    path("requests/<uuid:request_id>/regenerate/", views.regenerate, name="request-regenerate"),
    path("requests/<uuid:request_id>/delete/", views.delete, name="request-delete"),
    path("requests/<uuid:request_id>/images/<int:index>/", views.image_viewer, name="image-viewer"),
]
