"""UI routes (filled by the UI layer)."""

urlpatterns = []
