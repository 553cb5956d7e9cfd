"""Staff manage the model catalogue here: what is offered, whether files are healthy, refresh."""

import json
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat, truncatechars
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from models_registry import jobs, services
from models_registry.models import AvailableModel, RegistryJob

MAX_LISTED = 10  # names listed in a message before "… and N more"


def _listing(items):
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" … and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


class BackendFilter(admin.SimpleListFilter):
    """Which configured backend listed the model last time (or none, or not known per backend)."""

    title = "on backend"
    parameter_name = "backend"
    NONE, UNKNOWN = "none", "unknown"

    def lookups(self, request, model_admin):
        configured = [(b["url"], urlsplit(b["url"]).netloc) for b in settings.COMFYUI_BACKENDS]
        return [*configured, (self.NONE, "on no configured backend"), (self.UNKNOWN, "not known (folder only)")]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return None
        if value == self.UNKNOWN:
            return queryset.filter(backends__isnull=True)
        configured = {b["url"] for b in settings.COMFYUI_BACKENDS}
        # matched here rather than in SQL: SQLite (development) has no JSON containment lookup, and the
        # catalogue is small (hundreds of rows)
        rows = queryset.exclude(backends__isnull=True).values_list("pk", "backends")
        if value == self.NONE:
            return queryset.filter(pk__in=[pk for pk, urls in rows if not configured.intersection(urls)])
        return queryset.filter(pk__in=[pk for pk, urls in rows if value in urls])


class WordListField(forms.Field):
    """A list of words or phrases edited one per line (stored as a JSON list): blank lines dropped,
    repeats kept once, each at most ``max_length`` characters."""

    widget = forms.Textarea(attrs={"rows": 4, "cols": 40, "class": "word-list"})

    def __init__(self, *, max_items=50, max_length=100, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", "One per line. The Generate page offers each as a button that inserts it "
                                       "into the prompt.")
        super().__init__(**kwargs)
        self.max_items, self.max_length = max_items, max_length

    def prepare_value(self, value):
        if isinstance(value, list | tuple):
            return "\n".join(str(item) for item in value)
        return value

    def to_python(self, value):
        lines = (line.strip() for line in str(value or "").splitlines())
        return list(dict.fromkeys(line for line in lines if line))

    def validate(self, value):
        super().validate(value)
        if len(value) > self.max_items:
            raise forms.ValidationError(f"At most {self.max_items} lines.")
        too_long = [word for word in value if len(word) > self.max_length]
        if too_long:
            raise forms.ValidationError(f"At most {self.max_length} characters a line: {too_long[0][:40]}…")

    def has_changed(self, initial, data):
        return (initial or []) != self.to_python(data)


class AvailableModelForm(forms.ModelForm):
    trigger_words = WordListField(label="Trigger words")

    class Meta:
        model = AvailableModel
        fields = ["trigger_words"]  # the admin adds the rest of its fieldsets


@admin.register(AvailableModel)
class AvailableModelAdmin(admin.ModelAdmin):
    form = AvailableModelForm
    list_display = ("name", "type", "base_architecture", "is_active", "is_present", "on_backends", "size", "header_ok",
                    "hash_state", "last_seen")
    list_filter = ("type", "is_active", "is_present", BackendFilter, "base_architecture")
    list_editable = ("is_active",)
    search_fields = ("name", "display_name", "description", "base_architecture")
    ordering = ("type", "name")
    actions = ("enable_models", "disable_models", "check_health", "compute_hash")
    readonly_fields = ("file_path", "size", "file_mtime", "sha256", "hashed_size", "hashed_mtime", "header_error",
                       "pretty_metadata", "is_present", "on_backends", "hash_state", "last_seen", "created_at",
                       "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "type", "display_name", "description", "is_active")}),
        ("For people choosing a model", {"fields": ("base_architecture", "trigger_words", "recommended_width",
                                                    "recommended_height")}),
        ("File", {"fields": ("is_present", "on_backends", "last_seen", "file_path", "size", "file_mtime", "sha256",
                             "hash_state", "hashed_size", "hashed_mtime", "header_error")}),
        ("safetensors metadata", {"classes": ("collapse",), "fields": ("pretty_metadata",)}),
        ("Record", {"fields": ("created_at", "updated_at")}),
    )

    def get_readonly_fields(self, request, obj=None):
        # name and type are what ComfyUI knows the file by: set on creation, never renamed here
        return self.readonly_fields + (("name", "type") if obj else ())

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj):
        return filesizeformat(obj.size_bytes) if obj.size_bytes is not None else "—"

    @admin.display(description="on backends")
    def on_backends(self, obj):
        if obj.backends is None:
            return "not known"
        if not obj.backends:
            return "none"
        configured = {b["url"] for b in settings.COMFYUI_BACKENDS}
        return format_html_join(mark_safe("<br>"), '<span title="{}">{}{}</span>', (
            (url, urlsplit(url).netloc or url, "" if url in configured else " (not configured)")
            for url in obj.backends))

    @admin.display(description="sha256")
    def hash_state(self, obj):
        """The digest, or the hash job under way, or why the last one failed."""
        job = getattr(obj, "latest_hash_job", None)
        if job is not None and job.is_active:
            return _job_state(job)
        if job is not None and job.status == RegistryJob.Status.FAILED and job.finished_at > obj.updated_at:
            return format_html('<span title="{}">failed</span>', job.summary)
        return format_html('<span title="{}">{}…</span>', obj.sha256, obj.sha256[:12]) if obj.sha256 else "—"

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

    @admin.action(description="Compute SHA-256 (in a worker: reads whole files)", permissions=["change"])
    def compute_hash(self, request, queryset):
        requested, already, impossible = jobs.request_hashes(models=queryset, user=request.user)
        if requested:
            self.message_user(request, f"Hashing {len(requested)} model(s) in a worker, one file at a time; the "
                                       "sha256 column shows progress and the result (reload the page).",
                              messages.SUCCESS)
        if already:
            self.message_user(request, "Already being hashed: " + _listing([_label(job.model) for job in already]),
                              messages.INFO)
        for model, reason in impossible:
            self.message_user(request, f"{_label(model)}: cannot hash: {reason}", messages.ERROR)

    def get_changelist(self, request, **kwargs):
        return _ChangeListWithJobs

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "can_refresh": self.has_change_permission(request),
                         "refresh_state": _refresh_state(jobs.latest_refresh())}
        return super().changelist_view(request, extra_context=extra_context)

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            obj.latest_hash_job = jobs.latest_hash_jobs([obj.pk]).get(obj.pk)
        return obj

    def get_urls(self):
        refresh = path("refresh/", self.admin_site.admin_view(self.refresh_view),
                       name="models_registry_availablemodel_refresh")
        return [refresh, *super().get_urls()]

    def refresh_view(self, request):
        """The changelist's refresh button: record the request, let a worker run it, go back to the list
        (whose banner shows the refresh under way, then its result)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            self.message_user(request, "You may not refresh the model registry.", messages.ERROR)
        else:
            job, created = jobs.request_refresh(user=request.user)
            if created:
                self.message_user(request, "Refresh requested: a worker runs it; reload this page for the result.",
                                  messages.SUCCESS)
            else:
                self.message_user(request, f"A refresh is already under way ({_requested(job)}).", messages.INFO)
        return HttpResponseRedirect(reverse("admin:models_registry_availablemodel_changelist"))


class _ChangeListWithJobs(ChangeList):
    """The model list, with each shown model's newest hash job attached (one query for the page)."""

    def get_results(self, request):
        super().get_results(request)
        latest = jobs.latest_hash_jobs([model.pk for model in self.result_list])
        for model in self.result_list:
            model.latest_hash_job = latest.get(model.pk)


def _label(model):
    return f"{model.type}:{model.name}"


def _requested(job):
    who = job.requested_by.get_username() if job.requested_by else "someone"
    return f"requested by {who} at {formats.localize(timezone.localtime(job.requested_at))}"


def _job_state(job):
    """One line for an active job: waiting, or running since when — or, past the limit, abandoned."""
    if jobs.is_abandoned(job):
        return "abandoned: no worker finished it (a worker stopped, or none runs); ask again"
    if job.status == RegistryJob.Status.RUNNING:
        return f"running since {formats.localize(timezone.localtime(job.started_at))}"
    return f"waiting for a worker since {formats.localize(timezone.localtime(job.requested_at))}"


def _refresh_state(job):
    """The changelist banner: ``(level, headline, [detail lines])`` for the newest refresh, or None."""
    if job is None:
        return None
    if job.is_active:
        return ("info", f"Refresh under way ({_requested(job)}): {_job_state(job)}.", [])
    finished = formats.localize(timezone.localtime(job.finished_at))
    if job.status == RegistryJob.Status.FAILED:
        return ("error", f"The last refresh failed at {finished} ({_requested(job)}): {job.summary}", [])
    lines = [f"{title}: {_listing(job.details.get(key, []))}" for key, title in (
        ("added", "Added"), ("missing", "Missing now")) if job.details.get(key)]
    lines += job.details.get("problems", [])[:MAX_LISTED]
    return ("success", f"Last refresh finished at {finished} ({_requested(job)}): {job.summary}.", lines)


@admin.register(RegistryJob)
class RegistryJobAdmin(admin.ModelAdmin):
    """History of refreshes and hashes staff asked for (read only: workers write these rows)."""

    list_display = ("kind", "model", "status", "requested_by", "requested_at", "started_at", "finished_at",
                    "short_summary")
    list_filter = ("kind", "status")
    list_select_related = ("model", "requested_by")
    search_fields = ("model__name", "summary")

    @admin.display(description="summary")
    def short_summary(self, obj):
        return format_html('<span title="{}">{}</span>', obj.summary, truncatechars(obj.summary, 80))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
