"""Workflows become first-class: a request records its workflow (slug, version) and its parameters.

Existing rows are txt2img version 1: their negative prompt, LoRAs and sampler settings move into
``params`` (with the summary columns), their requirements are computed as txt2img v1 built them,
and the graph column is renamed ``graph`` (``workflow`` now names the kind of graph). The request's
own ``idempotency_key`` goes: keys live in ``IdempotencyRecord`` since 0003 (which copied them).
"""

import hashlib
import json
import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

# txt2img v1 as it was when this migration was written (a migration is a frozen record)
TXT2IMG_NODES = ["CLIPTextEncode", "CheckpointLoaderSimple", "EmptyLatentImage", "KSampler", "SaveImage", "VAEDecode"]


def _requirement_key(nodes, model_files):
    canonical = json.dumps({"nodes": nodes, "models": model_files}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def forwards(apps, schema_editor):
    GenerationRequest = apps.get_model("generation", "GenerationRequest")
    RequirementSet = apps.get_model("generation", "RequirementSet")
    known = set()
    rows = GenerationRequest.objects.only("id", "prompt", "negative_prompt", "checkpoint_model", "lora_models",
                                          "width", "height", "batch_size", "sampler_params")
    for row in rows.iterator(chunk_size=2000):
        loras = row.lora_models or []
        params = {"prompt": row.prompt, "negative_prompt": row.negative_prompt,
                  "checkpoint_model": row.checkpoint_model, "lora_models": loras, "width": row.width,
                  "height": row.height, "batch_size": row.batch_size, "sampler_params": row.sampler_params or {}}
        nodes = sorted(TXT2IMG_NODES + (["LoraLoader"] if loras else []))
        model_files = {"checkpoints": [row.checkpoint_model]}
        if loras:
            model_files["loras"] = sorted({lora["name"] for lora in loras if isinstance(lora, dict) and "name" in lora})
        key = _requirement_key(nodes, model_files)
        if key not in known:
            RequirementSet.objects.get_or_create(key=key, defaults={"nodes": nodes, "model_files": model_files})
            known.add(key)
        GenerationRequest.objects.filter(pk=row.pk).update(params=params, requirements_id=key)


def last_dispatches(apps, schema_editor):
    GenerationRequest = apps.get_model("generation", "GenerationRequest")
    DispatchTurn = apps.get_model("generation", "DispatchTurn")
    latest = (GenerationRequest.objects.filter(started_at__isnull=False).values("user_id")
              .annotate(last=models.Max("started_at")).order_by())
    DispatchTurn.objects.bulk_create([DispatchTurn(user_id=row["user_id"], last_dispatched_at=row["last"])
                                      for row in latest], batch_size=2000)


def backwards(apps, schema_editor):
    GenerationRequest = apps.get_model("generation", "GenerationRequest")
    for row in GenerationRequest.objects.filter(workflow_slug="txt2img").iterator(chunk_size=2000):
        params = row.params or {}
        GenerationRequest.objects.filter(pk=row.pk).update(
            negative_prompt=params.get("negative_prompt", ""), lora_models=params.get("lora_models", []),
            sampler_params=params.get("sampler_params", {}))


class Migration(migrations.Migration):

    dependencies = [
        ("generation", "0004_throttling"),
        ("models_registry", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="InputImage",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("kind", models.CharField(choices=[("image", "Image"), ("mask", "Mask")], default="image", max_length=8)),
                ("sha256", models.CharField(max_length=64)),
                ("path", models.CharField(help_text="Storage name", max_length=255)),
                ("width", models.PositiveIntegerField()),
                ("height", models.PositiveIntegerField()),
                ("size_bytes", models.PositiveIntegerField()),
                ("has_transparency", models.BooleanField(default=False,
                                                         help_text="Some pixels are not opaque (an inpaint area)")),
                ("source", models.CharField(blank=True, default="", help_text="Where it came from (URL, request)",
                                            max_length=2000)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("user", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="input_images",
                                           to=settings.AUTH_USER_MODEL)),
            ],
            options={"ordering": ["-created_at"]},
        ),
        migrations.AddConstraint(
            model_name="inputimage",
            constraint=models.UniqueConstraint(fields=("user", "kind", "sha256"), name="inputimage_unique_content"),
        ),
        migrations.AddIndex(
            model_name="inputimage",
            index=models.Index(fields=["user", "-created_at"], name="inputimage_user_created_idx"),
        ),
        migrations.CreateModel(
            name="RequirementSet",
            fields=[
                ("key", models.CharField(help_text="sha256 of the canonical JSON", max_length=64, primary_key=True,
                                         serialize=False)),
                ("nodes", models.JSONField(default=list)),
                ("model_files", models.JSONField(default=dict, help_text="{folder: [file names]}")),
            ],
        ),
        migrations.AddField(
            model_name="backendstate",
            name="capabilities_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="backendstate",
            name="model_lists",
            field=models.JSONField(blank=True, default=dict, help_text="{folder: [file names]}"),
        ),
        migrations.AddField(
            model_name="backendstate",
            name="node_classes",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.RenameField(model_name="generationrequest", old_name="workflow", new_name="graph"),
        migrations.AddField(
            model_name="generationrequest",
            name="params",
            field=models.JSONField(blank=True, default=dict,
                                   help_text="The workflow's parameters, validated (seeds drawn)"),
        ),
        migrations.AddField(
            model_name="generationrequest",
            name="workflow_slug",
            field=models.CharField(default="txt2img", max_length=64),
        ),
        migrations.AddField(
            model_name="generationrequest",
            name="workflow_version",
            field=models.PositiveIntegerField(default=1),
        ),
        migrations.AddField(
            model_name="generationrequest",
            name="inputs",
            field=models.ManyToManyField(blank=True, help_text="Input images the parameters name",
                                         related_name="requests", to="generation.inputimage"),
        ),
        migrations.AddField(
            model_name="generationrequest",
            name="requirements",
            field=models.ForeignKey(blank=True, help_text="Node classes and model files a backend needs", null=True,
                                    on_delete=django.db.models.deletion.PROTECT, related_name="+",
                                    to="generation.requirementset"),
        ),
        migrations.RunPython(forwards, backwards, elidable=False),
        migrations.AddIndex(
            model_name="generationrequest",
            index=models.Index(condition=models.Q(("status", "queued")), fields=["requirements", "created_at"],
                               name="genreq_queued_req_idx"),
        ),
        migrations.CreateModel(
            name="DispatchTurn",
            fields=[
                ("user", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True,
                                              related_name="+", serialize=False, to=settings.AUTH_USER_MODEL)),
                ("last_dispatched_at", models.DateTimeField()),
            ],
        ),
        migrations.RunPython(last_dispatches, migrations.RunPython.noop, elidable=False),
        migrations.RemoveConstraint(model_name="generationrequest", name="genreq_prompt_not_empty"),
        migrations.RemoveConstraint(model_name="generationrequest", name="genreq_unique_idempotency_key"),
        migrations.RemoveField(model_name="generationrequest", name="idempotency_key"),
        migrations.RemoveField(model_name="generationrequest", name="lora_models"),
        migrations.RemoveField(model_name="generationrequest", name="negative_prompt"),
        migrations.RemoveField(model_name="generationrequest", name="sampler_params"),
        migrations.AlterField(
            model_name="generationrequest",
            name="graph",
            field=models.JSONField(blank=True, help_text="The exact API-format graph sent to ComfyUI", null=True),
        ),
        migrations.AlterField(
            model_name="generationrequest",
            name="batch_size",
            field=models.PositiveSmallIntegerField(default=1, help_text="Summary: images produced"),
        ),
        migrations.AlterField(
            model_name="generationrequest",
            name="checkpoint_model",
            field=models.CharField(blank=True, default="", max_length=255,
                                   help_text="Summary: checkpoint name as sent to ComfyUI (dispatch affinity)"),
        ),
        migrations.AlterField(
            model_name="generationrequest",
            name="height",
            field=models.PositiveIntegerField(default=512, help_text="Summary: height of the results"),
        ),
        migrations.AlterField(
            model_name="generationrequest",
            name="prompt",
            field=models.TextField(blank=True, default="", help_text="Summary: the text people search and list by"),
        ),
        migrations.AlterField(
            model_name="generationrequest",
            name="width",
            field=models.PositiveIntegerField(default=512, help_text="Summary: width of the results"),
        ),
    ]
