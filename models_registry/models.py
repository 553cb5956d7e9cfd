"""The catalogue of checkpoints, LoRAs and upscale models that users may choose from."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class ModelType(models.TextChoices):
    # values are stored and used by API clients: never rename one
    CHECKPOINT = "checkpoint", "Checkpoint"
    LORA = "lora", "LoRA"
    UPSCALE_MODEL = "upscale_model", "Upscale model"


# ComfyUI's model folder for each type: what /models/<folder> lists and a loader's file list is called
COMFYUI_FOLDERS = {ModelType.CHECKPOINT: "checkpoints", ModelType.LORA: "loras",
                   ModelType.UPSCALE_MODEL: "upscale_models"}


def offered_models(model_type):
    """Models users may choose: active and present on the last refresh (the one query for it)."""
    return AvailableModel.objects.filter(type=model_type, is_active=True, is_present=True)


class AvailableModel(models.Model):
    """A model file as ComfyUI knows it (``name`` is what goes into the workflow).

    Rows are never deleted by a refresh: a file that vanished is marked ``is_present=False``
    so the requests that reference it keep their link and history stays readable.
    """

    name = models.CharField(max_length=255, help_text="Name as ComfyUI knows it, e.g. styles/foo.safetensors")
    type = models.CharField(max_length=16, choices=ModelType.choices)
    display_name = models.CharField(max_length=255, blank=True)
    file_path = models.CharField(max_length=1024, blank=True, help_text="Absolute path when the folder is mounted here")
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True, help_text="Offered to users")
    is_present = models.BooleanField(default=True, help_text="Seen on the last refresh")
    size_bytes = models.BigIntegerField(null=True, blank=True)
    file_mtime = models.FloatField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    hashed_size = models.BigIntegerField(null=True, blank=True, help_text="size when sha256 was computed")
    hashed_mtime = models.FloatField(null=True, blank=True, help_text="mtime when sha256 was computed")
    base_architecture = models.CharField(max_length=64, blank=True, help_text="e.g. SD1.5, SDXL, Flux")
    trigger_words = models.JSONField(default=list, blank=True)
    recommended_width = models.PositiveIntegerField(null=True, blank=True)
    recommended_height = models.PositiveIntegerField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True, help_text="safetensors __metadata__ (trimmed)")
    header_error = models.TextField(blank=True, help_text="Why the header could not be read, if it could not")
    last_seen = models.DateTimeField(null=True, blank=True)
    backends = models.JSONField(null=True, blank=True, help_text=(
        "URLs of the ComfyUI backends whose last listing held it ([]: none does); null: not known per "
        "backend (no backend listing of its folder has been read, e.g. seen in a mounted folder only)"))
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["type", "name"]
        constraints = [
            models.UniqueConstraint(fields=["type", "name"], name="availablemodel_unique_type_name"),
            models.CheckConstraint(condition=models.Q(type__in=ModelType.values), name="availablemodel_type_valid"),
            models.CheckConstraint(condition=models.Q(size_bytes__isnull=True) | models.Q(size_bytes__gte=0),
                                   name="availablemodel_size_nonnegative"),
        ]
        indexes = [models.Index(fields=["type", "is_active", "is_present"], name="availablemodel_offer_idx")]

    def __str__(self):
        return f"{self.get_type_display()}: {self.name}"

    @property
    def label(self):
        return self.display_name or self.name.rsplit("/", 1)[-1].rsplit(".", 1)[0]

    @property
    def is_offered(self):
        return self.is_active and self.is_present


class RegistryJob(models.Model):
    """Registry work staff asked for, done by a worker: a refresh, or hashing one model's file.

    The web request only records the decision (who, when) and enqueues it; the Django-Q task
    claims it (``requested`` → ``running``) and records how it ended, so the admin can show that
    it is under way and then its result. At most one refresh, and one hash per model, is active.
    """

    class Kind(models.TextChoices):
        REFRESH = "refresh", "Refresh from ComfyUI"
        HASH = "hash", "Compute SHA-256"

    class Status(models.TextChoices):
        REQUESTED = "requested", "Waiting for a worker"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    ACTIVE = (Status.REQUESTED, Status.RUNNING)

    kind = models.CharField(max_length=16, choices=Kind.choices)
    model = models.ForeignKey(AvailableModel, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="registry_jobs", help_text="The model to hash (hash jobs only)")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.REQUESTED)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    requested_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    summary = models.CharField(max_length=500, blank=True, help_text="How it ended, in one line")
    details = models.JSONField(default=dict, blank=True, help_text="Refresh: added, missing, problems; hash: sha256")

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(kind__in=["refresh", "hash"]), name="registryjob_kind_valid"),
            models.CheckConstraint(condition=models.Q(status__in=["requested", "running", "done", "failed"]),
                                   name="registryjob_status_valid"),
            models.CheckConstraint(condition=models.Q(kind="refresh", model__isnull=True)
                                   | models.Q(kind="hash", model__isnull=False), name="registryjob_model_iff_hash"),
            models.UniqueConstraint(fields=["kind"], condition=models.Q(kind="refresh",
                                                                        status__in=["requested", "running"]),
                                    name="registryjob_one_active_refresh"),
            models.UniqueConstraint(fields=["model"], condition=models.Q(kind="hash",
                                                                         status__in=["requested", "running"]),
                                    name="registryjob_one_active_hash_per_model"),
        ]
        indexes = [models.Index(fields=["kind", "model", "-requested_at"], name="registryjob_latest_idx")]

    def __str__(self):
        target = f" {self.model.name}" if self.model_id else ""
        return f"{self.get_kind_display()}{target}: {self.get_status_display()}"

    @property
    def is_active(self):
        return self.status in self.ACTIVE
