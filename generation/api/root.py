"""``GET /api/v1/``: where everything in the API is, as absolute links.

Public on purpose, like the schema at ``/api/schema/``: it lists addresses only, no data, so a
script (or someone following the link ``scripts/run.sh`` prints) can find the token endpoint
before it has a token. Every endpoint it links to requires authentication as usual.
"""

from django.urls import reverse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

# link name → URL name (what each is: docs/api.md); the order is the order of the answer
LINKS = {
    "token": "auth-token",  # POST username and password → your token
    "generate": "generation-generate",
    "requests": "generation-list",
    "models": "model-list",
    "webhook_secret": "webhook-secret",
    "backends": "backends",  # staff only
    "schema": "schema",
    "docs": "api-docs",
}


class ApiRootView(APIView):
    """Links to every part of the API (no authentication needed to read the links)."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(summary="Links to every part of the API (public)", auth=[], responses={200: inline_serializer(
        "ApiRoot", {"name": serializers.CharField(), "version": serializers.CharField(),
                    "links": serializers.DictField(child=serializers.URLField())})})
    def get(self, request):
        links = {key: request.build_absolute_uri(reverse(name)) for key, name in LINKS.items()}
        return Response({"name": "Genonaut API", "version": "v1", "links": links})
