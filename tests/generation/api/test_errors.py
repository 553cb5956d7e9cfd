"""Every error has one JSON shape; no input produces a 500."""

import json

import pytest

GENERATE = "/api/v1/comfyui/generate/"


def _error(response, status):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"} and error["message"]
    return error


@pytest.mark.parametrize("body", [
    "{", "[1, 2", "{'single': 'quotes'}", "NaN", '{"prompt": NaN}', '{"width": Infinity}', "\xff\xfe",
])
def test_malformed_json_is_a_parse_error(api, body):
    response = api.post(GENERATE, body.encode("latin-1"), content_type="application/json")
    assert _error(response, 400)["code"] == "parse_error"


def test_deeply_nested_json_is_a_400_not_a_crash(api):
    body = "[" * 100_000 + "]" * 100_000
    response = api.post(GENERATE, body, content_type="application/json")
    assert response.status_code in (400, 413)
    assert _error(response, response.status_code)["code"] in {"parse_error", "request_too_large"}


def test_deep_nesting_under_the_size_limit_is_a_parse_error(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000_000
    body = '{"sampler_params": ' + "[" * 200_000 + "]" * 200_000 + "}"
    assert _error(api.post(GENERATE, body, content_type="application/json"), 400)["code"] == "parse_error"


@pytest.mark.parametrize(("body", "field"), [
    ('{"prompt": "x", "checkpoint_model": "tiny-sd15-random.safetensors", "sampler_params": {"cfg": 1e999}}',
     "sampler_params.cfg"),
    ('{"prompt": "x", "checkpoint_model": "tiny-sd15-random.safetensors", "width": ' + "9" * 400 + "}", "width"),
    ('{"prompt": ["nested", {"garbage": [1]}], "checkpoint_model": "tiny-sd15-random.safetensors"}', "prompt"),
    ('{"prompt": "x", "checkpoint_model": {"a": 1}}', "checkpoint_model"),
    ('{"prompt": "x", "checkpoint_model": "tiny-sd15-random.safetensors", "batch_size": true}', "batch_size"),
    ('{"prompt": "x", "checkpoint_model": "tiny-sd15-random.safetensors", "lora_models": [[[]]]}', "lora_models.0"),
    ('{"prompt": "x", "checkpoint_model": "tiny-sd15-random.safetensors", "sampler_params": []}', "sampler_params"),
    ('{"prompt": "a\\u0000b", "checkpoint_model": "tiny-sd15-random.safetensors"}', "prompt"),
    ("[1, 2, 3]", "non_field_errors"),
    ('"just a string"', "non_field_errors"),
])
def test_wrong_types_and_huge_numbers_name_the_field(api, checkpoint, body, field):
    error = _error(api.post(GENERATE, body, content_type="application/json"), 400)
    assert error["code"] == "invalid" and field in error["fields"], error


def test_body_over_the_limit_is_413(api, settings, valid_params):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = json.dumps({**valid_params, "prompt": "x" * 2000})
    assert _error(api.post(GENERATE, body, content_type="application/json"), 413)["code"] == "request_too_large"


def test_body_over_the_limit_without_content_length_is_413(api, settings, valid_params):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = json.dumps({**valid_params, "prompt": "x" * 2000})
    response = api.generic("POST", GENERATE, body, content_type="application/json", CONTENT_LENGTH="10")
    # a lying Content-Length truncates the body: either it is too short to parse or it is refused
    assert response.status_code in (400, 413)
    _error(response, response.status_code)


def test_form_bodies_are_unsupported_on_submit(api, valid_params):
    response = api.post(GENERATE, {"prompt": "x"}, format="multipart")
    assert _error(response, 415)["code"] == "unsupported_media_type"


def test_wrong_method_is_405_with_allow(api):
    response = api.put("/api/v1/comfyui/generate/", {}, format="json")
    assert _error(response, 405)["code"] == "method_not_allowed"
    assert "POST" in response["Allow"]


def test_unknown_api_path_is_json_404(api):
    assert _error(api.get("/api/v1/nothing-here/"), 404)["code"] == "not_found"


def test_anonymous_is_401_with_www_authenticate(client):
    response = client.get("/api/v1/comfyui/")
    assert _error(response, 401)["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Token"


def test_bad_token_is_401(client, db):
    response = client.get("/api/v1/comfyui/", HTTP_AUTHORIZATION="Token not-a-real-token")
    assert _error(response, 401)["code"] == "authentication_failed"
    response = client.get("/api/v1/comfyui/", HTTP_AUTHORIZATION="Token a b c")
    assert _error(response, 401)["code"] == "authentication_failed"


def test_image_errors_are_json_even_when_accepting_images(api):
    response = api.get("/api/v1/comfyui/00000000-0000-0000-0000-000000000000/images/0/", HTTP_ACCEPT="image/png")
    assert _error(response, 404)["code"] == "not_found"


@pytest.mark.parametrize(("body", "field"), [
    ('{"prompt": "x", "checkpoint_model": "a\\u0000b"}', "checkpoint_model"),
    ('{"prompt": "x", "checkpoint_model": "c", "lora_models": [{"name": "a\\u0000"}]}', "lora_models.0.name"),
    ('{"prompt": "x\\udabf", "checkpoint_model": "c"}', "prompt"),
    ('{"prompt": "x", "checkpoint_model": "c", "sampler_params": {"sampler_name": "\\u0000"}}',
     "sampler_params.sampler_name"),
    ('{"prompt": "x", "checkpoint_model": "c", "webhook_url": "http://a\\u0000b/"}', "webhook_url"),
    ('{"\\udabf": 1, "prompt": "x", "checkpoint_model": "c"}', "\\udabf"),
])
def test_strings_no_column_can_hold_are_400_naming_the_field(api, body, field):
    """Found by the schema fuzz run: NUL reached a PostgreSQL query and answered 500."""
    error = _error(api.post(GENERATE, body, content_type="application/json"), 400)
    assert field in error["fields"], error


def test_regenerate_body_with_nul_is_400(api):
    response = api.post("/api/v1/comfyui/00000000-0000-0000-0000-000000000000/regenerate/",
                        '{"same_seed": "\\u0000"}', content_type="application/json")
    assert response.status_code in (400, 404)
    _error(response, response.status_code)
