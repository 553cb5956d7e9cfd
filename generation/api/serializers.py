"""Serializers: the shapes the API reads and writes.

What a valid generation request is lives in :mod:`generation.params` alone; the input
serializers here describe the body for the OpenAPI schema and the browsable API, and
``GenerateSerializer`` hands the raw body to ``validate_params`` (through the service).
"""

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from generation.models import GenerationRequest, WebhookSecret
from generation.selectors import queue_position
from generation.states import Status
from models_registry.models import AvailableModel, ModelType

# --- input ------------------------------------------------------------------------------------


class LoraInputSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="A LoRA name from GET /api/v1/comfyui/models/?type=lora")
    strength_model = serializers.FloatField(required=False, default=1.0)
    strength_clip = serializers.FloatField(required=False, default=1.0)


class SamplerParamsInputSerializer(serializers.Serializer):
    seed = serializers.IntegerField(required=False, default=-1, min_value=-1,
                                    help_text="-1 draws a random seed (stored, so the image is reproducible)")
    steps = serializers.IntegerField(required=False, default=20, min_value=1)
    cfg = serializers.FloatField(required=False, default=7.0)
    sampler_name = serializers.CharField(required=False, default="euler", help_text="One of the backend's samplers")
    scheduler = serializers.CharField(required=False, default="normal", help_text="One of the backend's schedulers")
    denoise = serializers.FloatField(required=False, default=1.0, min_value=0.0, max_value=1.0)


class GenerateSerializer(serializers.Serializer):
    """The body of a submit. Ranges and option lists are checked by ``generation.params``."""

    prompt = serializers.CharField()
    negative_prompt = serializers.CharField(required=False, allow_blank=True, default="")
    checkpoint_model = serializers.CharField(help_text="A checkpoint name from GET /api/v1/comfyui/models/")
    lora_models = LoraInputSerializer(many=True, required=False)
    width = serializers.IntegerField(required=False, default=512, min_value=16, help_text="A multiple of 8")
    height = serializers.IntegerField(required=False, default=512, min_value=16, help_text="A multiple of 8")
    batch_size = serializers.IntegerField(required=False, default=1, min_value=1)
    sampler_params = SamplerParamsInputSerializer(required=False)
    webhook_url = serializers.URLField(required=False, allow_blank=True,
                                       help_text="Receives a signed POST when the request finishes")


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not define, each named (as submit does in ``generation.params``)."""

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
    fraction = serializers.FloatField(source="progress", help_text="0 to 1")
    current_node = serializers.CharField(help_text="ComfyUI node id executing now, if known")
    step = serializers.IntegerField(source="current_step")
    total_steps = serializers.IntegerField()


class LoraSerializer(serializers.Serializer):
    name = serializers.CharField()
    strength_model = serializers.FloatField()
    strength_clip = serializers.FloatField()


class SamplerParamsSerializer(serializers.Serializer):
    seed = serializers.IntegerField(allow_null=True)
    steps = serializers.IntegerField(allow_null=True)
    cfg = serializers.FloatField(allow_null=True)
    sampler_name = serializers.CharField(allow_null=True)
    scheduler = serializers.CharField(allow_null=True)
    denoise = serializers.FloatField(allow_null=True)


class ImageLinksSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    url = serializers.CharField()
    download_url = serializers.CharField()
    thumbnails = serializers.DictField(child=serializers.CharField(), help_text="size → URL (small, medium, large)")


def _url(context, name, **kwargs):
    path = reverse(name, kwargs=kwargs)
    request = context.get("request")
    return request.build_absolute_uri(path) if request is not None else path


class GenerationRequestSerializer(serializers.ModelSerializer):
    """A request as its owner sees it (also the webhook body)."""

    user = serializers.CharField(source="user.get_username", read_only=True)
    progress = serializers.SerializerMethodField()
    queue_position = serializers.SerializerMethodField(
        help_text="1-based place in the fair queue while pending/queued, else null")
    lora_models = LoraSerializer(many=True)
    sampler_params = SamplerParamsSerializer()
    images = serializers.SerializerMethodField()
    error_detail = serializers.JSONField(help_text="ComfyUI's node and exception detail when it failed")
    webhook_url = serializers.CharField(allow_blank=True, help_text="Empty when none was given")

    class Meta:
        model = GenerationRequest
        fields = ["id", "user", "status", "progress", "queue_position", "prompt", "negative_prompt",
                  "checkpoint_model", "lora_models", "width", "height", "batch_size", "sampler_params",
                  "webhook_url", "backend", "attempts", "error", "error_detail", "images", "regenerated_from",
                  "created_at", "queued_at", "started_at", "finished_at", "updated_at"]
        read_only_fields = fields

    def to_representation(self, instance):
        """The same dict DRF's fields would build (``tests/generation/api/test_serializers.py`` compares
        them), built by hand: DRF's per-field machinery cost ~0.5 ms a row, more than a page's query."""
        obj = instance
        sampler = obj.sampler_params
        loras = obj.lora_models
        return {
            "id": str(obj.pk),
            "user": str(obj.user.get_username()),
            "status": str(obj.status),
            "progress": self.get_progress(obj),
            "queue_position": self.get_queue_position(obj),
            "prompt": obj.prompt,
            "negative_prompt": obj.negative_prompt,
            "checkpoint_model": obj.checkpoint_model,
            "lora_models": None if loras is None else [_lora(lora) for lora in loras],
            "width": obj.width,
            "height": obj.height,
            "batch_size": obj.batch_size,
            "sampler_params": None if sampler is None else _sampler(sampler),
            "webhook_url": obj.webhook_url,
            "backend": obj.backend,
            "attempts": obj.attempts,
            "error": obj.error,
            "error_detail": obj.error_detail,
            "images": self.get_images(obj),
            "regenerated_from": obj.regenerated_from_id,
            "created_at": _datetime(obj.created_at),
            "queued_at": _datetime(obj.queued_at),
            "started_at": _datetime(obj.started_at),
            "finished_at": _datetime(obj.finished_at),
            "updated_at": _datetime(obj.updated_at),
        }

    @extend_schema_field(ProgressSerializer)
    def get_progress(self, obj):
        return {"fraction": obj.progress, "current_node": obj.current_node, "step": obj.current_step,
                "total_steps": obj.total_steps}

    @extend_schema_field(serializers.IntegerField(allow_null=True, min_value=1))
    def get_queue_position(self, obj):
        positions = self.context.get("queue_positions")
        if positions is not None:  # a list page computed them for all its rows at once
            return positions.get(obj.pk)
        return queue_position(obj)

    @extend_schema_field(ImageLinksSerializer(many=True))
    def get_images(self, obj):
        if obj.status != Status.COMPLETED or not obj.outputs:
            return []
        prefix = self._request_url_prefix(obj)
        images = []
        for index, _path in enumerate(obj.outputs):
            thumbs = obj.thumbnails[index] if index < len(obj.thumbnails or []) else {}
            url = f"{prefix}images/{index}/"
            images.append({
                "index": index,
                "url": url,
                "download_url": f"{url}?download=1",
                "thumbnails": {size: f"{url}thumbnail/{size}/" for size in (thumbs or {})},
            })
        return images

    def _request_url_prefix(self, obj):
        """The request's detail URL; image and thumbnail URLs extend it (one ``reverse`` per row, not
        one per link; ``test_image_links_match_reverse`` checks they are what ``reverse`` gives)."""
        return _url(self.context, "generation-detail", pk=obj.pk)


def _lora(lora):
    return {"name": _str(lora.get("name")), "strength_model": _float(lora.get("strength_model")),
            "strength_clip": _float(lora.get("strength_clip"))}


def _sampler(sampler):
    return {"seed": _int(sampler.get("seed")), "steps": _int(sampler.get("steps")), "cfg": _float(sampler.get("cfg")),
            "sampler_name": _str(sampler.get("sampler_name")), "scheduler": _str(sampler.get("scheduler")),
            "denoise": _float(sampler.get("denoise"))}


def _int(value):
    return None if value is None else int(value)


def _float(value):
    return None if value is None else float(value)


def _str(value):
    return None if value is None else str(value)


_DATETIME_FIELD = serializers.DateTimeField()


def _datetime(value):
    return None if value is None else _DATETIME_FIELD.to_representation(value)


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
