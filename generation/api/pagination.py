"""Keyset (cursor) pagination for request lists: every page costs the same at any depth.

The cursor holds the last row's ``created_at`` (or ``updated_at``), so a page is an index range
scan on ``(user, -created_at)`` / ``(user, -updated_at)`` — no OFFSET, no COUNT.
"""

import re

from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination

ORDERINGS = {
    "-created_at": ("-created_at", "-id"),
    "created_at": ("created_at", "id"),
    "-updated_at": ("-updated_at", "-id"),
    "updated_at": ("updated_at", "id"),
}


class RequestCursorPagination(CursorPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100
    ordering = ORDERINGS["-created_at"]
    ordering_param = "ordering"

    def get_ordering(self, request, queryset, view):
        value = request.query_params.get(self.ordering_param, "-created_at")
        if value not in ORDERINGS:
            raise ValidationError({self.ordering_param: [f"Must be one of {', '.join(ORDERINGS)}."]})
        return ORDERINGS[value]

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        # ASCII digits only: "²".isdigit() is True but int("²") raises
        if raw is not None and (not re.fullmatch(r"[0-9]{1,3}", raw) or not 1 <= int(raw) <= self.max_page_size):
            raise ValidationError({self.page_size_query_param: [f"Must be an integer from 1 to {self.max_page_size}."]})
        return super().get_page_size(request)

    def decode_cursor(self, request):
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            cursor = False
        if cursor is False or (cursor is not None and cursor.position is not None
                               and _parse_position(cursor.position) is None):
            raise ValidationError({self.cursor_query_param: ["Invalid cursor."]})
        return cursor

    def get_schema_operation_parameters(self, view):
        params = super().get_schema_operation_parameters(view)
        for param in params:
            if param["name"] == self.page_size_query_param:
                param["schema"].update({"minimum": 1, "maximum": self.max_page_size})
        params.append({
            "name": self.ordering_param, "required": False, "in": "query",
            "description": "Sort by creation or last update, ascending or descending (default -created_at).",
            "schema": {"type": "string", "enum": list(ORDERINGS)},
        })
        return params


def _parse_position(value):
    try:
        parsed = parse_datetime(value)
    except (ValueError, TypeError):
        return None
    return parsed if parsed is not None and parsed.tzinfo is not None else None
