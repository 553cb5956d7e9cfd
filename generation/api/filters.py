"""Query-string filters for the request list and the model list, validated like any input."""

import datetime
import re

from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.filters import BaseFilterBackend

from generation.selectors import RequestFilters, filter_requests
from generation.states import Status
from models_registry.models import ModelType


class _DateOrDateTimeField(serializers.DateTimeField):
    """Accepts ``2026-11-24`` (that day's midnight, server time zone) or a full ISO datetime."""

    def to_internal_value(self, value):
        if isinstance(value, str) and len(value) == 10:
            try:
                day = datetime.date.fromisoformat(value)
            except ValueError:
                self.fail("invalid", format="YYYY-MM-DD or ISO 8601")
            return timezone.make_aware(datetime.datetime.combine(day, datetime.time.min))
        try:
            return super().to_internal_value(value)
        except (OverflowError, ValueError):  # e.g. year 1 moved to UTC falls off the calendar
            self.fail("invalid", format="YYYY-MM-DD or ISO 8601")


class RequestFilterSerializer(serializers.Serializer):
    status = serializers.ListField(child=serializers.ChoiceField(choices=Status.values), required=False,
                                   help_text="One or more statuses, repeated or comma-separated")
    checkpoint = serializers.CharField(required=False, max_length=255, help_text="Checkpoint name, exact")
    # any slug, not only those on offer now: a retired template's requests stay findable
    workflow = serializers.CharField(required=False, max_length=64, help_text="A workflow slug, exact")
    created_after = _DateOrDateTimeField(required=False, help_text="Inclusive; a date or an ISO datetime")
    created_before = _DateOrDateTimeField(required=False, help_text="Exclusive; a date or an ISO datetime")
    search = serializers.CharField(required=False, max_length=200, allow_blank=True, help_text="Words in the prompt")
    user = serializers.CharField(required=False, max_length=150, help_text="Staff only: a username or user id")


def _multi(query_params, name):
    values = []
    for raw in query_params.getlist(name):
        values.extend(part.strip() for part in raw.split(",") if part.strip())
    return values


class RequestFilter(BaseFilterBackend):
    """``?status=queued,running&checkpoint=…&workflow=…&created_after=…&created_before=…&search=…&user=…``
    (the rules themselves: :func:`generation.selectors.filter_requests`)."""

    def filter_queryset(self, request, queryset, view):
        if view.action != "list":
            return queryset
        data = {key: request.query_params.get(key) for key in ("checkpoint", "workflow", "created_after",
                                                                 "created_before", "search", "user")
                if key in request.query_params}
        if "status" in request.query_params:
            data["status"] = _multi(request.query_params, "status")
        params = RequestFilterSerializer(data=data)
        params.is_valid(raise_exception=True)
        values = params.validated_data
        if "user" in values and not request.user.is_staff:
            raise ValidationError({"user": ["Only staff may list other users' requests."]})
        return filter_requests(queryset, RequestFilters(
            statuses=tuple(values.get("status") or ()), checkpoint=values.get("checkpoint"),
            workflow=values.get("workflow"), created_after=values.get("created_after"),
            created_before=values.get("created_before"), search=values.get("search", ""),
            user=_user_by_name_or_id(values["user"]) if "user" in values else None))

    def get_schema_operation_parameters(self, view):
        return [
            _param("status", "One or more statuses, repeated or comma-separated (e.g. queued,running).",
                   {"type": "array", "items": {"type": "string", "enum": Status.values}}, explode=True),
            _param("checkpoint", "Only requests for this checkpoint name.",
                   {"type": "string", "minLength": 1, "maxLength": 255}),
            _param("workflow", "Only requests of this workflow (its slug).",
                   {"type": "string", "minLength": 1, "maxLength": 64}),
            _param("created_after", "Created at or after (YYYY-MM-DD or ISO 8601).", {"type": "string"}),
            _param("created_before", "Created before (YYYY-MM-DD or ISO 8601).", {"type": "string"}),
            _param("search", "Every word must appear in the prompt (case-insensitive).",
                   {"type": "string", "maxLength": 200}),
            _param("user", "Staff only: a username or numeric user id.",
                   {"type": "string", "minLength": 1, "maxLength": 150}),
        ]


def _user_by_name_or_id(value):
    users = get_user_model().objects
    user = users.filter(username=value).first()
    if user is None and re.fullmatch(r"[0-9]{1,18}", value):  # ASCII: int("①") raises
        user = users.filter(pk=int(value)).first()
    if user is None:
        raise ValidationError({"user": ["No such user."]})
    return user


class ModelFilter(BaseFilterBackend):
    """``?type=checkpoint|lora|upscale_model&search=…`` (name or description)."""

    def filter_queryset(self, request, queryset, view):
        data = {key: request.query_params.get(key) for key in ("type", "search") if key in request.query_params}
        params = ModelFilterSerializer(data=data)
        params.is_valid(raise_exception=True)
        if "type" in params.validated_data:
            queryset = queryset.filter(type=params.validated_data["type"])
        for word in params.validated_data.get("search", "").split()[:8]:
            queryset = queryset.filter(Q(name__icontains=word) | Q(description__icontains=word))
        return queryset

    def get_schema_operation_parameters(self, view):
        return [
            _param("type", f"One of {', '.join(ModelType.values)}.", {"type": "string", "enum": ModelType.values}),
            _param("search", "Every word must appear in the name or the description.",
                   {"type": "string", "maxLength": 200}),
        ]


class ModelFilterSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=ModelType.values, required=False)
    search = serializers.CharField(required=False, max_length=200, allow_blank=True)


def _param(name, description, schema, *, explode=None):
    param = {"name": name, "required": False, "in": "query", "description": description, "schema": schema}
    if explode is not None:
        param.update({"style": "form", "explode": explode})
    return param
