"""The model catalogue and the staff backends overview."""

from generation.models import BackendState
from models_registry.models import AvailableModel, ModelType

MODELS = "/api/v1/comfyui/models/"


def test_models_lists_active_and_present_with_what_a_chooser_needs(api, checkpoint, lora):
    AvailableModel.objects.create(name="off.safetensors", type=ModelType.CHECKPOINT, is_active=False)
    AvailableModel.objects.create(name="gone.safetensors", type=ModelType.CHECKPOINT, is_present=False)
    AvailableModel.objects.create(name="sdxl/base.safetensors", type=ModelType.CHECKPOINT, base_architecture="SDXL",
                                  recommended_width=1024, recommended_height=1024, description="SDXL base")
    body = api.get(MODELS).json()
    assert [m["name"] for m in body] == ["sdxl/base.safetensors", checkpoint.name, lora.name]
    sdxl = body[0]
    assert sdxl == {"name": "sdxl/base.safetensors", "type": "checkpoint", "label": "base",
                    "description": "SDXL base", "base_architecture": "SDXL", "trigger_words": [],
                    "recommended_width": 1024, "recommended_height": 1024}
    assert body[2]["trigger_words"] == ["tinystyle"]


def test_models_filter_by_type_and_search(api, checkpoint, lora):
    assert [m["name"] for m in api.get(MODELS, {"type": "lora"}).json()] == [lora.name]
    assert [m["name"] for m in api.get(MODELS, {"type": "checkpoint"}).json()] == [checkpoint.name]
    assert [m["name"] for m in api.get(MODELS, {"search": "SD1.5 TEST"}).json()] == [checkpoint.name]  # description
    assert [m["name"] for m in api.get(MODELS, {"search": "lora"}).json()] == [lora.name]  # name
    response = api.get(MODELS, {"type": "vae"})
    assert response.status_code == 400 and "type" in response.json()["error"]["fields"]


def test_models_filter_by_upscale_model_type(api, checkpoint):
    upscaler = AvailableModel.objects.create(name="4x-UltraSharp.pth", type=ModelType.UPSCALE_MODEL)
    body = api.get(MODELS, {"type": "upscale_model"}).json()
    assert [(m["name"], m["type"]) for m in body] == [(upscaler.name, "upscale_model")]
    assert upscaler.name not in [m["name"] for m in api.get(MODELS, {"type": "checkpoint"}).json()]


def test_backends_overview_for_staff(client_for, staff_user, settings):
    settings.COMFYUI_BACKENDS = [{"url": "http://127.0.0.1:9", "capacity": 3}]
    BackendState.objects.create(url="http://127.0.0.1:9", capacity=3, is_healthy=False, last_error="refused")
    body = client_for(staff_user).get("/api/v1/comfyui/backends/").json()
    assert len(body) == 1
    backend = body[0]
    assert backend["url"] == "http://127.0.0.1:9" and backend["healthy"] is False
    assert backend["capacity"] == 3 and backend["free_slots"] == 0 and backend["last_error"] == "refused"
    assert backend["recent_failures"] == []


def test_backends_overview_is_staff_only(api):
    response = api.get("/api/v1/comfyui/backends/")
    assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"
