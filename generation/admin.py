"""Staff look at requests and backends here (read-only), and publish ComfyUI graphs as workflows.

Status changes belong to :mod:`generation.lifecycle` and files to :mod:`generation.storage`, so
the request and backend admins are read-only: editing a row here would bypass both. Published
workflows are edited through :mod:`generation.workflows.templates` (new versions, checks).
"""

import json
import uuid
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.db import transaction
from django.shortcuts import redirect
from django.template.defaultfilters import truncatechars
from django.template.response import TemplateResponse
from django.utils.html import format_html

from generation.errors import GenerationError
from generation.login_guard import LoginCounter
from generation.models import BackendState, GenerationRequest, WorkflowTemplate
from generation.workflows import builtin_workflows, templates


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


class BackendFilter(admin.SimpleListFilter):
    """Backends known from their state rows (every backend ever configured), not a DISTINCT over history."""

    title = "backend"
    parameter_name = "backend"
    NONE = "none"

    def lookups(self, request, model_admin):
        return [*((url, url) for url in BackendState.objects.order_by("url").values_list("url", flat=True)),
                (self.NONE, "never dispatched")]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(backend="" if value == self.NONE else value)


class WorkflowFilter(admin.SimpleListFilter):
    """Built-in workflows and every template (disabled ones too: requests ran them), not a DISTINCT over history."""

    title = "workflow"
    parameter_name = "workflow_slug"

    def lookups(self, request, model_admin):
        return [*((workflow.slug, workflow.name) for workflow in builtin_workflows()),
                *WorkflowTemplate.objects.order_by("name").values_list("slug", "name")]

    def queryset(self, request, queryset):
        return queryset if self.value() is None else queryset.filter(workflow_slug=self.value())


@admin.register(GenerationRequest)
class GenerationRequestAdmin(ReadOnlyAdmin):
    list_display = ("short_id", "user", "status", "workflow_slug", "short_prompt", "short_checkpoint", "backend_host",
                    "progress_percent", "attempts", "created_at")
    list_filter = ("status", WorkflowFilter, BackendFilter, ("created_at", admin.DateFieldListFilter))
    list_select_related = ("user", "run")
    search_fields = ("prompt", "user__username", "user__email", "comfyui_prompt_id")
    # no date_hierarchy: its links come from a DISTINCT over every row's date; the created_at filter needs none
    show_full_result_count = False  # counting a big history on every page is slow
    fieldsets = (
        (None, {"fields": ("id", "user", "status", "progress_percent", "current_node", "current_step",
                           "total_steps", "backend", "comfyui_prompt_id", "attempts", "backend_stop")}),
        ("Asked for", {"fields": ("workflow_slug", "workflow_version", "pretty_params", "prompt", "checkpoint_model",
                                  "checkpoint", "width", "height", "batch_size", "webhook_url",
                                  "regenerated_from")}),
        ("Error", {"fields": ("error", "pretty_error_detail")}),
        ("Results", {"fields": ("pretty_outputs", "pretty_thumbnails", "webhook_delivered_at")}),
        ("Graph sent to ComfyUI", {"classes": ("collapse",), "fields": ("pretty_graph",)}),
        ("Times", {"fields": ("created_at", "queued_at", "started_at", "finished_at", "updated_at", "heartbeat",
                              "deadline_at", "not_before")}),
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

    @admin.display(description="progress", ordering="run__progress")
    def progress_percent(self, obj):
        return f"{obj.progress:.0%}"

    @admin.display(description="heartbeat (lease of the running attempt)")
    def heartbeat(self, obj):
        return obj.live.heartbeat_at

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


class TemplateImportForm(forms.Form):
    name = forms.CharField(max_length=120)
    slug = forms.SlugField(max_length=64, required=False, help_text="What API clients send as \"workflow\"; "
                                                                    "default: from the name")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    graph_file = forms.FileField(required=False, label="Graph file",
                                 help_text="ComfyUI's Export (API) file, or a saved workflow (.json)")
    graph_text = forms.CharField(widget=forms.Textarea(attrs={"rows": 8}), required=False, label="…or paste it")

    def clean(self):
        data = super().clean()
        upload, text = data.get("graph_file"), (data.get("graph_text") or "").strip()
        if bool(upload) == bool(text):
            raise forms.ValidationError("Give the graph as a file or pasted, one of the two.")
        raw = upload.read(settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1) if upload else text.encode()
        if len(raw) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            raise forms.ValidationError(f"The graph is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.")
        try:
            data["graph"] = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise forms.ValidationError(f"The graph is not JSON: {exc}") from exc
        return data


class TemplateSettingsForm(forms.ModelForm):
    class Meta:
        model = WorkflowTemplate
        fields = ["name", "description", "is_enabled", "visibility", "groups"]
        widgets = {"description": forms.Textarea(attrs={"rows": 2}), "groups": forms.CheckboxSelectMultiple}


@admin.register(WorkflowTemplate)
class WorkflowTemplateAdmin(admin.ModelAdmin):
    """Publish a ComfyUI graph as a workflow: import it, confirm the proposed parameters, enable it.

    The add and change pages are our own (an import form; the definition table, outputs, versions
    and a test run), over :mod:`generation.workflows.templates`; a changed definition saves a new
    version, so requests keep the version they ran.
    """

    list_display = ("name", "slug", "is_enabled", "visibility", "latest_version", "updated_at")
    list_filter = ("is_enabled", "visibility")
    search_fields = ("name", "slug", "description")
    actions = ["test_run"]

    class Media:
        css = {"all": ["css/admin.css"]}

    @admin.display(description="version")
    def latest_version(self, obj):
        latest = obj.versions.order_by("-version").values_list("version", flat=True).first()
        return f"v{latest}" if latest else "—"

    def has_delete_permission(self, request, obj=None):
        return False  # deleting is refused once a request used it: done from the change page

    def add_view(self, request, form_url="", extra_context=None):
        form = TemplateImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                template = templates.create_template(
                    name=form.cleaned_data["name"], slug=form.cleaned_data["slug"] or None,
                    description=form.cleaned_data["description"], graph=form.cleaned_data["graph"], user=request.user)
            except templates.TemplateInvalid as exc:
                for field, problems in exc.fields.items():
                    for problem in problems:
                        form.add_error(None, f"{field}: {problem}")
            else:
                messages.success(request, f"Imported as {template.slug} v1 (disabled). Confirm its parameters, "
                                          "then enable it.")
                return redirect("admin:generation_workflowtemplate_change", template.pk)
        context = {**self.admin_site.each_context(request), "title": "Publish a ComfyUI graph", "form": form,
                   "opts": self.model._meta, "add": True, "media": self.media, **(extra_context or {})}
        return TemplateResponse(request, "admin/generation/workflowtemplate/import.html", context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        template = self.get_object(request, object_id)
        if template is None:
            return self._get_obj_does_not_exist_redirect(request, self.model._meta, object_id)
        latest = template.versions.order_by("-version").first()
        info = templates.catalogue()
        rows = templates.editor_rows(latest, info)
        settings_form = TemplateSettingsForm(request.POST or None, instance=template)
        problems = {}
        if request.method == "POST" and "delete_version" in request.POST:
            return self._delete_version(request, template, request.POST["delete_version"])
        if request.method == "POST" and "delete_template" in request.POST:
            return self._delete_template(request, template)
        if request.method == "POST" and settings_form.is_valid():
            posted = {row["key"]: {field: request.POST.get(f"{row['key']}:{field}", "")
                                   for field in ("exposed", "name", "label", "default", "minimum", "maximum",
                                                 "required", "advanced", "help", "choices")} for row in rows}
            specs, outputs = templates.specs_from_editor(rows, posted, request.POST.getlist("outputs"))
            try:
                with transaction.atomic():
                    version = templates.new_version(template=template, user=request.user, parameters=specs,
                                                    outputs=outputs)
                    settings_form.save()
            except templates.TemplateInvalid as exc:
                problems = exc.fields
            else:
                messages.success(request, f"Saved: {template.slug} v{version.version}"
                                          f"{' (a new version)' if version.pk != latest.pk else ''}.")
                if "test_run" in request.POST:
                    return self._test_run(request, template)
                return redirect("admin:generation_workflowtemplate_change", template.pk)
        versions = template.versions.order_by("-version")
        used = set(GenerationRequest.objects.filter(workflow_slug=template.slug)
                   .values_list("workflow_version", flat=True).distinct().order_by())
        context = {
            **self.admin_site.each_context(request), "title": f"{template.name} ({template.slug})", "opts":
            self.model._meta, "original": template, "settings_form": settings_form, "rows": rows,
            "latest": latest, "problems": problems, "runnable_on": templates.runnable_on(latest.graph),
            "outputs": [{"node": node_id, "class_type": node["class_type"], "chosen": node_id in latest.outputs}
                        for node_id, node in latest.graph.items() if node["class_type"] in templates.SAVING_OUTPUTS],
            "versions": [{"row": row, "in_use": row.version in used} for row in versions],
            "kinds": templates.KINDS, "media": self.media + settings_form.media, **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/generation/workflowtemplate/edit.html", context)

    def _delete_version(self, request, template, number):
        row = template.versions.filter(version=number).first() if str(number).isdigit() else None
        if row is not None:
            try:
                templates.delete_version(row)
            except templates.TemplateInUse as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, f"Deleted {template.slug} v{number}.")
        return redirect("admin:generation_workflowtemplate_change", template.pk)

    def _delete_template(self, request, template):
        try:
            templates.delete_template(template)
        except templates.TemplateInUse as exc:
            messages.error(request, str(exc))
            return redirect("admin:generation_workflowtemplate_change", template.pk)
        messages.success(request, f"Deleted {template.slug}.")
        return redirect("admin:generation_workflowtemplate_changelist")

    def _test_run(self, request, template):
        try:
            generation = templates.test_run(template=template, user=request.user)
        except GenerationError as exc:
            messages.error(request, f"The test run was refused: {exc.message} "
                                    f"{'; '.join(f'{k}: {v}' for k, v in getattr(exc, 'fields', {}).items())}")
            return redirect("admin:generation_workflowtemplate_change", template.pk)
        messages.success(request, f"Test run of {template.slug} submitted; its result appears on this page.")
        return redirect("request-detail", generation.pk)

    @admin.action(description="Test run (once, with the defaults)")
    def test_run(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Choose one workflow to test.", level=messages.WARNING)
            return None
        return self._test_run(request, queryset.get())
