"""API v1 routes (filled by the API layer)."""

urlpatterns = []
