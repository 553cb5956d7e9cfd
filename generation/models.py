"""Generation requests: one row per thing a person asked for; the row is the source of truth."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from generation.states import ACTIVE, TERMINAL, Status


class GenerationRequest(models.Model):
    """One request to run a workflow, and everything that happened to it.

    ``workflow_slug``/``workflow_version`` and ``params`` say what was asked, as the workflow
    defines it (:mod:`generation.workflows`); the few real columns beside them (prompt,
    checkpoint, size, batch) are that workflow's :class:`~generation.workflows.Summary`, kept for
    history lists, filters and dispatch. Status changes go through :mod:`generation.states` only
    (conditional updates); other fields may be written by whoever holds the request in its
    current state.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generation_requests")

    # what was asked
    workflow_slug = models.CharField(max_length=64, default="txt2img")
    workflow_version = models.PositiveIntegerField(default=1)
    params = models.JSONField(default=dict, blank=True, help_text="The workflow's parameters, validated (seeds drawn)")
    inputs = models.ManyToManyField("generation.InputImage", blank=True, related_name="requests",
                                    help_text="Input images the parameters name")
    requirements = models.ForeignKey("generation.RequirementSet", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+", help_text="Node classes and model files a backend needs")
    prompt = models.TextField(blank=True, default="", help_text="Summary: the text people search and list by")
    checkpoint_model = models.CharField(max_length=255, blank=True, default="",
                                        help_text="Summary: checkpoint name as sent to ComfyUI (dispatch affinity)")
    checkpoint = models.ForeignKey("models_registry.AvailableModel", null=True, blank=True,
                                   on_delete=models.PROTECT, related_name="generation_requests")
    width = models.PositiveIntegerField(default=512, help_text="Summary: width of the results")
    height = models.PositiveIntegerField(default=512, help_text="Summary: height of the results")
    batch_size = models.PositiveSmallIntegerField(default=1, help_text="Summary: images produced")
    webhook_url = models.URLField(max_length=2000, blank=True, default="")
    regenerated_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                         related_name="regenerations")

    # where it is
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    progress = models.FloatField(default=0.0)
    current_node = models.CharField(max_length=64, blank=True, default="")
    current_step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    backend = models.CharField(max_length=255, blank=True, default="", help_text="Base URL of the ComfyUI backend")
    comfyui_prompt_id = models.CharField(max_length=64, blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    affinity_skips = models.PositiveSmallIntegerField(default=0)

    # what came out
    graph = models.JSONField(null=True, blank=True, help_text="The exact API-format graph sent to ComfyUI")
    outputs = models.JSONField(default=list, blank=True, help_text="Storage paths of the images")
    thumbnails = models.JSONField(default=list, blank=True, help_text="Per image: {size: storage path}")
    error = models.TextField(blank=True, default="", help_text="What went wrong, for the user")
    error_detail = models.JSONField(default=dict, blank=True, help_text="ComfyUI node / exception detail")
    webhook_delivered_at = models.DateTimeField(null=True, blank=True)

    # when
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True)
    executed_at = models.DateTimeField(null=True, blank=True,
                                       help_text="ComfyUI finished this attempt; outputs are being stored")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=Status.values), name="genreq_status_valid"),
            models.CheckConstraint(condition=Q(width__gte=16, width__lte=16384, height__gte=16, height__lte=16384),
                                   name="genreq_size_in_range"),
            models.CheckConstraint(condition=Q(batch_size__gte=1, batch_size__lte=64), name="genreq_batch_in_range"),
            models.CheckConstraint(condition=Q(progress__gte=0.0, progress__lte=1.0), name="genreq_progress_0_1"),
            models.CheckConstraint(condition=Q(finished_at__isnull=True) | Q(status__in=sorted(TERMINAL)),
                                   name="genreq_finished_only_when_terminal"),
        ]
        indexes = [
            # history: my requests newest first, optionally by status
            models.Index(fields=["user", "-created_at"], name="genreq_user_created_idx"),
            models.Index(fields=["user", "status", "-created_at"], name="genreq_user_status_created_idx"),
            models.Index(fields=["user", "-updated_at"], name="genreq_user_updated_idx"),
            # dispatcher and reconciler: only the live rows
            models.Index(fields=["status", "created_at"], name="genreq_active_idx",
                         condition=Q(status__in=sorted(ACTIVE))),
            models.Index(fields=["backend", "status"], name="genreq_backend_running_idx",
                         condition=Q(status="running")),
            # dispatcher: which requirement sets the queued requests need
            models.Index(fields=["requirements", "created_at"], name="genreq_queued_req_idx",
                         condition=Q(status="queued")),
        ]

    def __str__(self):
        return f"{self.id} ({self.status})"

    @property
    def is_terminal(self):
        return self.status in TERMINAL

    @property
    def is_active(self):
        return self.status in ACTIVE

    @property
    def workflow(self):
        """The :class:`~generation.workflows.Workflow` this request runs."""
        from generation.workflows import get_workflow

        return get_workflow(self.workflow_slug, self.workflow_version)


class BackendState(models.Model):
    """What the workers know about one ComfyUI backend, shared by every worker host.

    The list of backends and their capacity come from settings (``COMFYUI_URL``); this row
    holds the runtime facts: health with backoff, and the checkpoint the backend will have
    loaded once its queue drains (the checkpoint of the last job we sent it).
    """

    url = models.CharField(max_length=255, unique=True)
    capacity = models.PositiveSmallIntegerField(default=2)
    is_healthy = models.BooleanField(default=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    down_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    last_ok_at = models.DateTimeField(null=True, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    loaded_checkpoint = models.CharField(max_length=255, blank=True, default="")
    # what the backend can run, from its last /object_info (empty and null capabilities_at: not known yet)
    node_classes = models.JSONField(default=list, blank=True)
    model_lists = models.JSONField(default=dict, blank=True, help_text="{folder: [file names]}")
    capabilities_at = models.DateTimeField(null=True, blank=True)
    jobs_completed = models.PositiveIntegerField(default=0)
    jobs_failed = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["url"]

    def __str__(self):
        return f"{self.url} ({'up' if self.is_healthy else 'down'})"


def _new_webhook_secret():
    import secrets

    return secrets.token_hex(32)


class WebhookSecret(models.Model):
    """The per-user key that signs webhook bodies (HMAC-SHA256), shown to its owner only."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_secret")
    secret = models.CharField(max_length=128, default=_new_webhook_secret)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"webhook secret of {self.user}"


class InputImage(models.Model):
    """An image a person gave as input (uploaded, fetched from a URL, or one of their results).

    Stored once per owner and content (``inputs/<user>/<sha256>.png``): decoded and re-encoded as
    PNG with EXIF orientation applied and metadata stripped, so what reaches ComfyUI is exactly
    what was checked.
    """

    class Kind(models.TextChoices):
        IMAGE = "image", "Image"
        MASK = "mask", "Mask"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="input_images")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.IMAGE)
    sha256 = models.CharField(max_length=64)
    path = models.CharField(max_length=255, help_text="Storage name")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveIntegerField()
    has_transparency = models.BooleanField(default=False, help_text="Some pixels are not opaque (an inpaint area)")
    source = models.CharField(max_length=2000, blank=True, default="", help_text="Where it came from (URL, request)")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["user", "kind", "sha256"], name="inputimage_unique_content")]
        indexes = [models.Index(fields=["user", "-created_at"], name="inputimage_user_created_idx")]

    def __str__(self):
        return f"{self.kind} {self.sha256[:12]} of {self.user_id}"

    @property
    def content_type(self):
        return "image/png"


class RequirementSet(models.Model):
    """One distinct set of node classes and model files (shared by every request that needs it),
    so the dispatcher checks each set once per claim instead of once per queued request."""

    key = models.CharField(max_length=64, primary_key=True, help_text="sha256 of the canonical JSON")
    nodes = models.JSONField(default=list)
    model_files = models.JSONField(default=dict, help_text="{folder: [file names]}")

    def __str__(self):
        return self.key[:12]

    def as_requirements(self):
        from generation.workflows import Requirements

        return Requirements.from_json({"nodes": self.nodes, "models": self.model_files})


class DispatchTurn(models.Model):
    """When each user was last dispatched to: what round-robin fairness needs, one small row per user.

    Updated inside the claim (under the dispatch lock), so ordering users never reads their history.
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE,
                                related_name="+")
    last_dispatched_at = models.DateTimeField()

    def __str__(self):
        return f"{self.user_id} last dispatched {self.last_dispatched_at:%Y-%m-%d %H:%M:%S}"


class WorkflowTemplate(models.Model):
    """A workflow staff made from a ComfyUI graph (docs/workflows.md, "Operator-defined workflows").

    Its graph and parameter definition live in immutable :class:`WorkflowTemplateVersion` rows:
    editing makes a new version, and a request records the version it ran.
    """

    class Visibility(models.TextChoices):
        EVERYONE = "everyone", "Everyone"
        STAFF = "staff", "Staff only"
        GROUPS = "groups", "Chosen groups"

    slug = models.SlugField(max_length=64, unique=True, help_text="What API clients send as \"workflow\"")
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True, default="")
    is_enabled = models.BooleanField(default=False, help_text="Offered to the people it is visible to")
    visibility = models.CharField(max_length=16, choices=Visibility.choices, default=Visibility.STAFF)
    groups = models.ManyToManyField("auth.Group", blank=True, related_name="+",
                                    help_text="With visibility \"Chosen groups\": who may run it")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} ({self.slug})"


class WorkflowTemplateVersion(models.Model):
    """One immutable definition of a template: the API-format graph, its parameters, its outputs."""

    template = models.ForeignKey(WorkflowTemplate, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    graph = models.JSONField(help_text="API format, as checked against the backends' object_info")
    parameters = models.JSONField(default=list, help_text="The parameter definition (generation.workflows.templates)")
    outputs = models.JSONField(default=list, help_text="Ids of the output nodes whose files are the results")
    source_format = models.CharField(max_length=8, default="api", help_text="api or ui (converted)")
    notes = models.JSONField(default=list, blank=True, help_text="What importing left out")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["template", "-version"]
        constraints = [models.UniqueConstraint(fields=["template", "version"], name="templateversion_unique")]

    def __str__(self):
        return f"{self.template.slug} v{self.version}"
