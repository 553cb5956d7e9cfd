"""Serializers: the shapes the API reads and writes.

What a valid request is lives in each workflow's parameter definition (:mod:`generation.workflows`);
the OpenAPI schema of a submit body is generated from those definitions
(:mod:`generation.api.schema`). The serializers here describe the other bodies and the documents
the API answers.
"""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from generation.models import GenerationRequest, InputImage, WebhookSecret, WorkflowTemplate
from generation.representation import request_representation
from models_registry.models import AvailableModel, ModelType

# --- input ------------------------------------------------------------------------------------


class GenerateSerializer(serializers.Serializer):
    """Placeholder for the browsable API's form; the real body schema is per workflow (generation.api.schema)."""

    workflow = serializers.CharField(required=False, default="txt2img",
                                     help_text="A slug from GET /api/v1/comfyui/workflows/ (default txt2img)")
    webhook_url = serializers.URLField(required=False, allow_blank=True,
                                       help_text="Receives a signed POST when the request finishes")


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not define, each named (as submit does in each workflow's parameter definition)."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class RegenerateSerializer(StrictSerializer):
    same_seed = serializers.BooleanField(required=False, default=False,
                                         help_text="Reuse the seed (same image) instead of drawing a new one")


class TokenRequestSerializer(StrictSerializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)


# --- output -----------------------------------------------------------------------------------


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()


class ProgressSerializer(serializers.Serializer):
    fraction = serializers.FloatField(help_text="0 to 1")
    current_node = serializers.CharField(help_text="ComfyUI node executing now, if known")
    step = serializers.IntegerField()
    total_steps = serializers.IntegerField()


class WaitingReasonSerializer(serializers.Serializer):
    code = serializers.ChoiceField(choices=["no_backend_reachable", "retrying"],
                                   help_text="no_backend_reachable: no backend that can run it is reachable; "
                                             "retrying: requeued after a fault, waiting out its backoff")
    message = serializers.CharField()
    retry_at = serializers.DateTimeField(required=False, help_text="retrying: when it may start again")


class ImageLinksSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    url = serializers.CharField()
    download_url = serializers.CharField()
    thumbnails = serializers.DictField(child=serializers.CharField(), help_text="size → URL (small, medium, large)")


class WorkflowRefSerializer(serializers.Serializer):
    slug = serializers.CharField()
    version = serializers.IntegerField()
    name = serializers.CharField()


class RequestInputSerializer(serializers.Serializer):
    parameter = serializers.CharField(help_text="The parameter that names it, e.g. input_image")
    id = serializers.UUIDField()
    kind = serializers.ChoiceField(choices=InputImage.Kind.choices)
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    url = serializers.CharField(help_text="The stored input image (owner only)")


class GenerationRequestSerializer(serializers.ModelSerializer):
    """A request as its owner sees it (also the webhook body); built by
    :func:`generation.representation.request_representation`. The workflow's parameters are under
    ``params`` and, for v1 clients, repeated at the top level (``negative_prompt``, ``sampler_params``…)."""

    user = serializers.CharField(source="user.get_username", read_only=True)
    progress = ProgressSerializer()
    queue_position = serializers.IntegerField(allow_null=True, min_value=1,
                                              help_text="1-based place in the fair queue while pending/queued")
    waiting_reason = WaitingReasonSerializer(allow_null=True, help_text="While pending/queued: why it waits for "
                                             "more than its turn (null: it only waits for its turn)")
    backend_stop = serializers.ChoiceField(choices=["", "pending", "done", "unreachable"],
                                           help_text="After cancelling a running request: stopping its prompt on "
                                                     "the backend is pending, done, or the backend did not answer")
    workflow = WorkflowRefSerializer()
    params = serializers.JSONField(help_text="The workflow's parameters as validated (random seeds drawn)")
    inputs = RequestInputSerializer(many=True)
    images = ImageLinksSerializer(many=True)
    error_detail = serializers.JSONField(help_text="ComfyUI's node and exception detail when it failed")
    webhook_url = serializers.CharField(allow_blank=True, help_text="Empty when none was given")
    prompt = serializers.CharField(allow_blank=True, help_text="The prompt, if the workflow has one")
    checkpoint_model = serializers.CharField(allow_blank=True, help_text="The checkpoint, if the workflow loads one")
    width = serializers.IntegerField(help_text="Width of the results")
    height = serializers.IntegerField(help_text="Height of the results")
    batch_size = serializers.IntegerField(help_text="Number of images")

    class Meta:
        model = GenerationRequest
        fields = ["id", "user", "status", "progress", "queue_position", "waiting_reason", "workflow", "params",
                  "inputs", "prompt", "checkpoint_model", "width", "height", "batch_size", "webhook_url", "backend",
                  "backend_stop", "attempts", "error",
                  "error_detail", "images", "regenerated_from", "created_at", "queued_at", "started_at",
                  "finished_at", "updated_at"]
        read_only_fields = fields

    def to_representation(self, instance):
        request = self.context.get("request")
        positions = self.context.get("queue_positions")
        reasons = self.context.get("waiting_reasons")
        options = {"absolute": request.build_absolute_uri if request is not None else None,
                   "workflows": self.context.get("workflows")}
        if positions is not None:  # a list page computed them for all its rows at once
            options["queue_position"] = positions.get(instance.pk)
        if reasons is not None:
            options["waiting_reason"] = reasons.get(instance.pk)
        return request_representation(instance, **options)


class InputImageSerializer(serializers.ModelSerializer):
    """An input image: what ``POST /api/v1/comfyui/inputs/`` answers and ``GET`` lists."""

    content_type = serializers.CharField(read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = InputImage
        fields = ["id", "kind", "width", "height", "sha256", "content_type", "size_bytes", "has_transparency",
                  "url", "created_at"]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField())
    def get_url(self, obj):
        from django.urls import reverse

        path = reverse("input-image", kwargs={"pk": obj.pk})
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


class InputUploadSerializer(serializers.Serializer):
    image = serializers.FileField(help_text="The image (any format Pillow reads; stored as PNG)")
    mask = serializers.FileField(required=False, help_text="Optional inpaint mask of the same size: white = repaint")


class InputUploadResultSerializer(InputImageSerializer):
    mask = InputImageSerializer(allow_null=True, read_only=True)

    class Meta(InputImageSerializer.Meta):
        fields = [*InputImageSerializer.Meta.fields, "mask"]
        read_only_fields = fields


class TemplateCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=120)
    graph = serializers.JSONField(help_text="ComfyUI's API-format graph (Export (API)) or a saved workflow file")
    slug = serializers.CharField(required=False, max_length=64, help_text="Default: from the name")
    description = serializers.CharField(required=False, allow_blank=True, max_length=2000)


class TemplateUpdateSerializer(StrictSerializer):
    name = serializers.CharField(required=False, max_length=120)
    description = serializers.CharField(required=False, allow_blank=True, max_length=2000)
    is_enabled = serializers.BooleanField(required=False)
    visibility = serializers.ChoiceField(required=False, choices=WorkflowTemplate.Visibility.choices)
    groups = serializers.ListField(required=False, child=serializers.CharField(max_length=150), max_length=100,
                                   help_text="Group names (visibility \"groups\")")
    parameters = serializers.JSONField(required=False, help_text="The definition: a list of parameter specs")
    outputs = serializers.ListField(required=False, child=serializers.CharField(max_length=64), max_length=100)
    graph = serializers.JSONField(required=False, help_text="A new graph (its parameters are proposed again "
                                                            "unless given)")


class TemplateSerializer(serializers.Serializer):
    """A published workflow as staff see it."""

    slug = serializers.CharField()
    version = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    is_enabled = serializers.BooleanField()
    visibility = serializers.CharField()
    groups = serializers.ListField(child=serializers.CharField())
    parameters = serializers.JSONField(help_text="JSON Schema of the parameters")
    definition = serializers.JSONField(help_text="{parameters: [specs], outputs: [node ids]} of the latest version")
    widgets = serializers.JSONField(help_text="Every value input of the graph: what may become a parameter")
    versions = serializers.JSONField(help_text="[{version, created_at, in_use}]")
    runnable_on = serializers.ListField(child=serializers.CharField(), help_text="Backends that can run it")
    notes = serializers.ListField(child=serializers.CharField(), help_text="What importing left out")


class WorkflowSerializer(serializers.Serializer):
    slug = serializers.CharField()
    version = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    parameters = serializers.JSONField(help_text="JSON Schema of the parameters (limits and choices included)")


class AvailableModelSerializer(serializers.ModelSerializer):
    """What a person choosing a checkpoint or LoRA needs."""

    type = serializers.ChoiceField(choices=ModelType.choices)
    label = serializers.CharField(read_only=True)

    class Meta:
        model = AvailableModel
        fields = ["name", "type", "label", "description", "base_architecture", "trigger_words",
                  "recommended_width", "recommended_height"]
        read_only_fields = fields


class WebhookSecretSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookSecret
        fields = ["secret", "created_at"]
        read_only_fields = fields


# --- errors (schema only: generation.api.errors builds the body) -------------------------------


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable: invalid, parse_error, not_found, throttled, …")
    message = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()),
                                   help_text="field path (e.g. sampler_params.steps) → messages")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class BackendSerializer(serializers.Serializer):
    url = serializers.CharField()
    healthy = serializers.BooleanField()
    down_until = serializers.DateTimeField(allow_null=True)
    consecutive_failures = serializers.IntegerField()
    last_error = serializers.CharField(allow_blank=True)
    last_ok_at = serializers.DateTimeField(allow_null=True)
    last_checked_at = serializers.DateTimeField(allow_null=True)
    capacity = serializers.IntegerField()
    running = serializers.IntegerField()
    executing = serializers.IntegerField()
    waiting_on_backend = serializers.IntegerField()
    storing_outputs = serializers.IntegerField(help_text="finished on ComfyUI, images being stored (holds no slot)")
    free_slots = serializers.IntegerField()
    loaded_checkpoint = serializers.CharField(allow_blank=True)
    jobs_completed = serializers.IntegerField()
    jobs_failed = serializers.IntegerField()
    completed_last_hour = serializers.IntegerField()
    failed_last_hour = serializers.IntegerField()
    recent_failures = serializers.ListField(child=serializers.DictField())
