"""The catalogue of checkpoints, LoRAs and upscale models that users may choose from."""

from django.db import models


class ModelType(models.TextChoices):
    # values are stored and used by API clients: never rename one
    CHECKPOINT = "checkpoint", "Checkpoint"
    LORA = "lora", "LoRA"
    UPSCALE_MODEL = "upscale_model", "Upscale model"


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
