"""Staff look at requests and backends here; nothing is edited by hand.

Status changes belong to :mod:`generation.states` and files to :mod:`generation.storage`, so
these admins are read-only: editing a row here would bypass both.
"""

import json
import uuid
from urllib.parse import urlsplit

from django.contrib import admin
from django.contrib.admin.utils import flatten_fieldsets
from django.template.defaultfilters import truncatechars
from django.utils.html import format_html

from generation.login_guard import LoginCounter
from generation.models import BackendState, GenerationRequest


def _short_name(name):
    """A model file name without folders and extension, the full name in a tooltip (list columns)."""
    if not name:
        return "—"
    short = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return format_html('<span title="{}">{}</span>', name, truncatechars(short, 32))


def _host(url):
    return urlsplit(url).netloc or url or "—"


def _pretty_json(value):
    if value in (None, "", {}, []):
        return "—"
    return format_html('<pre class="admin-json">{}</pre>', json.dumps(value, indent=2, sort_keys=True,
                                                                     ensure_ascii=False))


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(GenerationRequest)
class GenerationRequestAdmin(ReadOnlyAdmin):
    list_display = ("short_id", "user", "status", "workflow_slug", "short_prompt", "short_checkpoint", "backend_host",
                    "progress_percent", "attempts", "created_at")
    list_filter = ("status", "workflow_slug", "backend", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("user",)
    search_fields = ("prompt", "user__username", "user__email", "comfyui_prompt_id")
    date_hierarchy = "created_at"
    show_full_result_count = False  # counting a big history on every page is slow
    fieldsets = (
        (None, {"fields": ("id", "user", "status", "progress_percent", "current_node", "current_step",
                           "total_steps", "backend", "comfyui_prompt_id", "attempts")}),
        ("Asked for", {"fields": ("workflow_slug", "workflow_version", "pretty_params", "prompt", "checkpoint_model",
                                  "checkpoint", "width", "height", "batch_size", "webhook_url",
                                  "regenerated_from")}),
        ("Error", {"fields": ("error", "pretty_error_detail")}),
        ("Results", {"fields": ("pretty_outputs", "pretty_thumbnails", "webhook_delivered_at")}),
        ("Graph sent to ComfyUI", {"classes": ("collapse",), "fields": ("pretty_graph",)}),
        ("Times", {"fields": ("created_at", "queued_at", "started_at", "finished_at", "updated_at", "heartbeat_at",
                              "deadline_at")}),
    )

    def get_readonly_fields(self, request, obj=None):
        return flatten_fieldsets(self.fieldsets)

    def get_search_results(self, request, queryset, search_term):
        """A pasted request id (a UUID) finds that request; anything else searches prompt and user."""
        try:
            request_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(pk=request_id), False

    @admin.display(description="id", ordering="id")
    def short_id(self, obj):
        return format_html('<span title="{}">{}…</span>', obj.pk, str(obj.pk)[:8])

    @admin.display(description="prompt")
    def short_prompt(self, obj):
        return truncatechars(obj.prompt, 50)

    @admin.display(description="checkpoint", ordering="checkpoint_model")
    def short_checkpoint(self, obj):
        return _short_name(obj.checkpoint_model)

    @admin.display(description="backend", ordering="backend")
    def backend_host(self, obj):
        return _host(obj.backend)

    @admin.display(description="progress", ordering="progress")
    def progress_percent(self, obj):
        return f"{obj.progress:.0%}"

    @admin.display(description="parameters")
    def pretty_params(self, obj):
        return _pretty_json(obj.params)

    @admin.display(description="error detail (ComfyUI node / exception)")
    def pretty_error_detail(self, obj):
        return _pretty_json(obj.error_detail)

    @admin.display(description="outputs")
    def pretty_outputs(self, obj):
        return _pretty_json(obj.outputs)

    @admin.display(description="thumbnails")
    def pretty_thumbnails(self, obj):
        return _pretty_json(obj.thumbnails)

    @admin.display(description="graph")
    def pretty_graph(self, obj):
        return _pretty_json(obj.graph)


@admin.register(BackendState)
class BackendStateAdmin(ReadOnlyAdmin):
    list_display = ("url", "is_healthy", "capacity", "consecutive_failures", "down_until", "short_checkpoint",
                    "jobs", "last_ok_at", "last_checked_at", "short_error")
    list_filter = ("is_healthy",)

    @admin.display(description="loaded checkpoint", ordering="loaded_checkpoint")
    def short_checkpoint(self, obj):
        return _short_name(obj.loaded_checkpoint)

    @admin.display(description="jobs done / failed")
    def jobs(self, obj):
        return f"{obj.jobs_completed} / {obj.jobs_failed}"

    @admin.display(description="last error")
    def short_error(self, obj):
        return format_html('<span title="{}">{}</span>', obj.last_error, truncatechars(obj.last_error, 70))


@admin.register(LoginCounter)
class LoginCounterAdmin(admin.ModelAdmin):
    """The login guard's counters: staff unlock an account or address by deleting its row."""

    list_display = ("kind", "key", "attempts", "lockouts", "locked_until", "last_attempt_at")
    list_filter = ("kind",)
    search_fields = ("key",)
    ordering = ("-last_attempt_at",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
