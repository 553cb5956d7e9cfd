"""Staff manage the model catalogue here: what is offered, whether files are healthy, refresh."""

import json

from django.contrib import admin, messages
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.urls import path, reverse
from django.utils.html import format_html

from models_registry import services
from models_registry.models import AvailableModel

MAX_LISTED = 10  # names listed in a message before "… and N more"


def _listing(items):
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" … and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


@admin.register(AvailableModel)
class AvailableModelAdmin(admin.ModelAdmin):
    class Media:
        css = {"all": ["css/admin.css"]}  # no inline styles (Content-Security-Policy)

    list_display = ("name", "type", "base_architecture", "is_active", "is_present", "size", "header_ok", "last_seen")
    list_filter = ("type", "is_active", "is_present", "base_architecture")
    list_editable = ("is_active",)
    search_fields = ("name", "display_name", "description", "base_architecture")
    ordering = ("type", "name")
    actions = ("enable_models", "disable_models", "check_health", "compute_hash")
    readonly_fields = ("file_path", "size", "file_mtime", "sha256", "hashed_size", "hashed_mtime", "header_error",
                       "pretty_metadata", "is_present", "last_seen", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "type", "display_name", "description", "is_active")}),
        ("For people choosing a model", {"fields": ("base_architecture", "trigger_words", "recommended_width",
                                                    "recommended_height")}),
        ("File", {"fields": ("is_present", "last_seen", "file_path", "size", "file_mtime", "sha256", "hashed_size",
                             "hashed_mtime", "header_error")}),
        ("safetensors metadata", {"classes": ("collapse",), "fields": ("pretty_metadata",)}),
        ("Record", {"fields": ("created_at", "updated_at")}),
    )

    def get_readonly_fields(self, request, obj=None):
        # name and type are what ComfyUI knows the file by: set on creation, never renamed here
        return self.readonly_fields + (("name", "type") if obj else ())

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj):
        return filesizeformat(obj.size_bytes) if obj.size_bytes is not None else "—"

    @admin.display(description="header", boolean=True)
    def header_ok(self, obj):
        return None if not obj.file_path.endswith(".safetensors") else not obj.header_error

    @admin.display(description="metadata")
    def pretty_metadata(self, obj):
        if not obj.metadata:
            return "—"
        return format_html('<pre class="admin-json">{}</pre>',
                           json.dumps(obj.metadata, indent=2, sort_keys=True, ensure_ascii=False))

    @admin.action(description="Offer selected models to users", permissions=["change"])
    def enable_models(self, request, queryset):
        changed = services.set_models_active(queryset, active=True)
        self.message_user(request, f"{changed} model(s) enabled.", messages.SUCCESS)

    @admin.action(description="Stop offering selected models", permissions=["change"])
    def disable_models(self, request, queryset):
        changed = services.set_models_active(queryset, active=False)
        self.message_user(request, f"{changed} model(s) disabled.", messages.SUCCESS)

    @admin.action(description="Health check (file present, header readable)", permissions=["view"])
    def check_health(self, request, queryset):
        for report in services.check_models_health(queryset):
            level = messages.SUCCESS if report.ok else messages.ERROR
            self.message_user(request, f"{report.model.type}:{report.model.name}: {report.message}", level)

    @admin.action(description="Compute SHA-256 (reads whole files: slow for big ones)", permissions=["change"])
    def compute_hash(self, request, queryset):
        for model in queryset:
            try:
                digest = services.hash_model(model)
            except (services.ModelFileMissing, OSError) as exc:
                self.message_user(request, f"{model.type}:{model.name}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{model.type}:{model.name}: sha256 {digest}", messages.SUCCESS)

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "can_refresh": self.has_change_permission(request)}
        return super().changelist_view(request, extra_context=extra_context)

    def get_urls(self):
        refresh = path("refresh/", self.admin_site.admin_view(self.refresh_view),
                       name="models_registry_availablemodel_refresh")
        return [refresh, *super().get_urls()]

    def refresh_view(self, request):
        """The changelist's refresh button: run the refresh service, report, go back to the list."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            self.message_user(request, "You may not refresh the model registry.", messages.ERROR)
        else:
            self._refresh(request)
        return HttpResponseRedirect(reverse("admin:models_registry_availablemodel_changelist"))

    def _refresh(self, request):
        try:
            result = services.refresh_models()
        except services.RefreshFailed as exc:
            self.message_user(request, f"Nothing refreshed: {exc}", messages.ERROR)
            return
        self.message_user(request, f"Refreshed: {result.summary()}.", messages.SUCCESS)
        for title, items in (("Added", result.added), ("Missing now", result.missing)):
            if items:
                self.message_user(request, f"{title}: {_listing(items)}", messages.INFO)
        for problem in result.errors + result.unreadable:
            self.message_user(request, problem, messages.WARNING)
