"""Fixtures for API, serving and webhook tests: token-authenticated clients, requests created directly
in any state (optionally with real PNGs and thumbnails in storage), and an S3 server (moto) on loopback."""

import io

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from generation import inputs
from generation.models import GenerationRequest, InputImage, RunState
from generation.states import TERMINAL, Status
from generation.storage import image_path, thumbnail_path


@pytest.fixture
def client_for(db):
    """``client_for(user)``: an APIClient sending that user's token (``None``: anonymous)."""

    def make(user):
        client = APIClient()
        if user is not None:
            token, _ = Token.objects.get_or_create(user=user)
            client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    return make


@pytest.fixture
def api(client_for, user):
    return client_for(user)


def png_bytes(width=64, height=48, color=(200, 30, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def make_generation(db, checkpoint):
    """Create a request row directly in ``status``; ``images=n`` stores n real PNGs plus thumbnails;
    ``progress``, ``current_node``, ``current_step``, ``total_steps`` go to its RunState."""

    def make(user, status=Status.QUEUED, *, images=0, **fields):
        now = timezone.now()
        run = {key: fields.pop(key) for key in ("progress", "current_node", "current_step", "total_steps")
               if key in fields}
        params = {"prompt": fields.get("prompt", "a lighthouse at dusk"), "negative_prompt": "",
                  "checkpoint_model": checkpoint.name, "lora_models": [], "width": 64, "height": 48,
                  "batch_size": max(1, images),
                  "sampler_params": {"seed": 42, "steps": 4, "cfg": 7.0, "sampler_name": "euler",
                                     "scheduler": "normal", "denoise": 1.0}}
        params.update(fields.pop("params", {}))
        values = {"prompt": params["prompt"], "checkpoint_model": checkpoint.name, "checkpoint": checkpoint,
                  "width": 64, "height": 48, "batch_size": max(1, images), "params": params,
                  "status": status, **fields}
        if status in TERMINAL:
            values.setdefault("finished_at", now)
        if status in (Status.QUEUED, Status.RUNNING) or status in TERMINAL:
            values.setdefault("queued_at", now)
        if status == Status.RUNNING:
            values.setdefault("backend", "http://127.0.0.1:9")
            values.setdefault("started_at", now)
            values.setdefault("attempts", 1)
        request = GenerationRequest.objects.create(user=user, **values)
        if run or status == Status.RUNNING:
            RunState.objects.create(request=request, attempt=request.attempts or 1, heartbeat_at=now, **run)
            if not request.attempts:
                GenerationRequest.objects.filter(pk=request.pk).update(attempts=1)
                request.attempts = 1
        if images:
            storage = storages["default"]
            outputs, thumbnails = [], []
            for index in range(images):
                name = storage.save(image_path(request, index), ContentFile(png_bytes(color=(index * 40, 80, 120))))
                outputs.append(name)
                thumbs = {}
                for size in ("small", "medium", "large"):
                    buffer = io.BytesIO()
                    Image.new("RGB", (16, 12), (index * 40, 80, 120)).save(buffer, format="WEBP")
                    thumbs[size] = storage.save(thumbnail_path(request, index, size, "webp"),
                                                ContentFile(buffer.getvalue()))
                thumbnails.append(thumbs)
            GenerationRequest.objects.filter(pk=request.pk).update(outputs=outputs, thumbnails=thumbnails)
            request.refresh_from_db()
        return request

    return make


def image_bytes(width=64, height=48, *, mode="RGB", color=(200, 30, 30), fmt="PNG", transparent_box=None):
    """An encoded image; ``transparent_box`` (l, t, r, b) makes that area fully transparent (RGBA)."""
    image = Image.new(mode, (width, height), color if mode != "RGBA" else (*color[:3], 255))
    if transparent_box:
        image = image.convert("RGBA")
        image.paste((0, 0, 0, 0), transparent_box)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def stored_input(db):
    """``stored_input(user, width, height, …)``: an InputImage of ``user``'s, as an upload stores it."""

    def store(user, width=64, height=48, *, kind=InputImage.Kind.IMAGE, **options):
        upload = SimpleUploadedFile("in.png", image_bytes(width, height, **options), content_type="image/png")
        record, _ = inputs.store_upload(user=user, upload=upload, kind=kind)
        return record

    return store


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3-compatible server on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_storage(s3_server, settings, monkeypatch):
    """Default storage switched to django-storages' S3 backend on the moto server, with a fresh bucket."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = f"genonaut-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    settings.AWS_QUERYSTRING_EXPIRE = 120
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {"bucket_name": bucket, "endpoint_url": s3_server, "region_name": "us-east-1",
                    "access_key": "testing", "secret_key": "testing", "querystring_auth": True,
                    "querystring_expire": 120, "default_acl": None, "file_overwrite": True}}}
    return {"bucket": bucket, "endpoint": s3_server}
