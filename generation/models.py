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
    current state. Liveness and progress, written several times a second while a job runs, live
    in the narrow :class:`RunState` row (``request.run``), never here: this table has many
    indexes and a wide row, so those writes would be neither cheap nor HOT.
    """

    class BackendStop(models.TextChoices):
        """Where stopping a cancelled request's prompt on its backend stands (cancel decides at once;
        the two ComfyUI calls run in a task)."""

        NONE = "", "Nothing to stop"
        PENDING = "pending", "Stopping on the backend"
        DONE = "done", "Stopped on the backend"
        UNREACHABLE = "unreachable", "Backend did not answer"

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
    backend = models.CharField(max_length=255, blank=True, default="", help_text="Base URL of the ComfyUI backend")
    comfyui_prompt_id = models.CharField(max_length=64, blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    affinity_skips = models.PositiveSmallIntegerField(default=0)
    not_before = models.DateTimeField(null=True, blank=True,
                                      help_text="A requeued request waits until then (retry backoff)")
    backend_stop = models.CharField(max_length=16, choices=BackendStop.choices, blank=True, default="",
                                    help_text="After a cancel: stopping its prompt on the backend")

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
    updated_at = models.DateTimeField(auto_now=True, help_text="Last change of the row (not of progress)")
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
            # dispatcher: which requirement sets the queued requests need; which users wait, and their
            # first requests (loose index scans: one probe per set or user, whatever the queue's length)
            models.Index(fields=["requirements", "created_at"], name="genreq_queued_req_idx",
                         condition=Q(status="queued", requirements__isnull=False)),
            models.Index(fields=["user", "created_at", "id"], name="genreq_queued_user_idx",
                         condition=Q(status="queued")),
            # the admin's request list, newest first over everyone's history
            models.Index(fields=["-created_at"], name="genreq_created_idx"),
            # operators: each backend's last hour and recent failures (Backends page, API) without a history scan
            models.Index(fields=["backend", "status", "finished_at"], name="genreq_backend_finished_idx",
                         condition=Q(finished_at__isnull=False)),
            # retention: the oldest finished requests that still have files (cleared rows leave the index)
            models.Index(fields=["finished_at"], name="genreq_retention_idx", condition=~Q(outputs=[], thumbnails=[])),
            # reconciler: cancels whose stop on the backend is still to be done (its task was lost)
            models.Index(fields=["finished_at"], name="genreq_stop_pending_idx", condition=Q(backend_stop="pending")),
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
    def live(self):
        """The :class:`RunState` of this request (progress, lease), or a blank one before its first
        dispatch. Load it with ``select_related("run")`` when reading many requests."""
        if not self.attempts:  # never dispatched: no row to look for
            return RunState(request_id=self.pk)
        try:
            return self.run
        except RunState.DoesNotExist:
            return RunState(request_id=self.pk)

    @property
    def progress(self):
        return self.live.progress

    @property
    def current_node(self):
        return self.live.current_node

    @property
    def current_step(self):
        return self.live.current_step

    @property
    def total_steps(self):
        return self.live.total_steps

    @property
    def workflow(self):
        """The :class:`~generation.workflows.Workflow` this request runs."""
        from generation.workflows import get_workflow

        return get_workflow(self.workflow_slug, self.workflow_version)


class RunState(models.Model):
    """Where a request's run stands: the lease of the attempt being run and its progress.

    One narrow row per request that was ever dispatched, written by its worker several times a
    second (heartbeat and progress together): it has no index but its primary key, so those writes
    are HOT updates that never touch :class:`GenerationRequest` or its indexes. The claim creates
    or resets it in the same transaction that marks the request running.

    ``heartbeat_at`` is the *lease*: the value the worker holding attempt ``attempt`` wrote last.
    Every write of that worker is conditional on it (and on the request still running that
    attempt); the reconciler takes a stale job over by replacing it.
    """

    request = models.OneToOneField(GenerationRequest, primary_key=True, on_delete=models.CASCADE,
                                   related_name="run")
    attempt = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    progress = models.FloatField(default=0.0)
    current_node = models.CharField(max_length=64, blank=True, default="")
    current_step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(progress__gte=0.0, progress__lte=1.0), name="runstate_progress_0_1"),
        ]

    def __str__(self):
        return f"{self.request_id} attempt {self.attempt}: {self.progress:.0%}"


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


class MetricCounter(models.Model):
    """One event counter for ``/metrics`` (:mod:`generation.metrics`): what the request rows do not keep
    (checkpoint loads, requeues, webhook deliveries, histograms of waits).

    A row per metric and label set, incremented where the event happens (never on the per-progress path),
    so counts survive restarts and add up across every worker host. Histograms keep one row per bucket
    (``le`` among the labels), ``total`` holding the sum of the values observed into it.
    """

    name = models.CharField(max_length=64)
    labels = models.CharField(max_length=512, default="{}", help_text="The label set as canonical JSON")
    count = models.BigIntegerField(default=0)
    total = models.FloatField(default=0.0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "labels"], name="metriccounter_unique")]

    def __str__(self):
        return f"{self.name}{self.labels} = {self.count}"


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


class RequestEvent(models.Model):
    """One status change of a request, as every live stream must deliver it (:mod:`generation.live`).

    Written in the transaction that changes the status (:func:`generation.lifecycle.transition`), so the
    log and the row never disagree; a stream replays it after a client's ``Last-Event-ID``. Only status
    changes are kept here: progress and previews are sent as they happen and coalesced, never logged.
    Old events are forgotten after ``LIVE["EVENT_RETENTION_HOURS"]`` (the reconciler).
    """

    id = models.BigAutoField(primary_key=True)
    request = models.ForeignKey(GenerationRequest, on_delete=models.CASCADE, related_name="+", db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False)
    status = models.CharField(max_length=16, choices=Status.choices)
    created_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["request", "id"], name="reqevent_request_idx"),
            models.Index(fields=["user", "id"], name="reqevent_user_idx"),
            models.Index(fields=["created_at"], name="reqevent_created_idx"),
        ]

    def __str__(self):
        return f"#{self.id} {self.request_id} → {self.status}"


class LatestPreview(models.Model):
    """The latest latent preview of a running request, when there is no Redis to keep it
    (:mod:`generation.live.previews`): one narrow row per running request, replaced in place, deleted
    when the request ends (and by the reconciler when it outlived ``LIVE["PREVIEW_TTL_SECONDS"]``)."""

    request = models.OneToOneField(GenerationRequest, primary_key=True, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False)
    image_type = models.CharField(max_length=32)
    data = models.BinaryField()
    number = models.PositiveIntegerField(default=0, help_text="Counts the previews of the request")
    updated_at = models.DateTimeField(db_index=True)

    def __str__(self):
        return f"preview {self.number} of {self.request_id}"
