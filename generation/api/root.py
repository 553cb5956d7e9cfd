"""``GET /api/v1/``: where everything in the API is, as absolute links.

Readable by whoever may read the schema at ``/api/schema/`` (``API_DOCS_PUBLIC``: anyone in
development, so the link ``scripts/run.sh`` prints works before logging in; logged-in users in
production). It lists addresses only, no data; every endpoint it links to requires authentication.
"""

from django.urls import reverse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from genonaut.api_docs import DocsAccess

# link name → URL name (what each is: docs/api.md); the order is the order of the answer
LINKS = {
    "token": "auth-token",  # POST username and password → your token
    "generate": "generation-generate",
    "requests": "generation-list",
    "models": "model-list",
    "workflows": "workflow-list",
    "inputs": "input-list",
    "webhook_secret": "webhook-secret",
    "backends": "backends",  # staff only
    "schema": "schema",
    "docs": "api-docs",
}


class ApiRootView(APIView):
    """Links to every part of the API."""

    permission_classes = [DocsAccess]

    @extend_schema(summary="Links to every part of the API", responses={200: inline_serializer(
        "ApiRoot", {"name": serializers.CharField(), "version": serializers.CharField(),
                    "links": serializers.DictField(child=serializers.URLField())})})
    def get(self, request):
        links = {key: request.build_absolute_uri(reverse(name)) for key, name in LINKS.items()}
        return Response({"name": "Genonaut API", "version": "v1", "links": links})
