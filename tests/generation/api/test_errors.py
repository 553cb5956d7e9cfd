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


# --- the adversarial pass's 500s (issue 10) ---------------------------------------------------------

NON_ASCII_DIGITS = ["²", "①", "٣", "１２", "𝟗"]


@pytest.mark.parametrize("digits", NON_ASCII_DIGITS)
def test_non_ascii_digits_in_page_size_name_the_field(api, digits):
    assert list(_error(api.get("/api/v1/comfyui/", {"page_size": digits}), 400)["fields"]) == ["page_size"]


@pytest.mark.parametrize("digits", NON_ASCII_DIGITS)
def test_non_ascii_digits_as_a_staff_user_filter_name_the_field(client_for, staff_user, digits):
    response = client_for(staff_user).get("/api/v1/comfyui/", {"user": digits})
    assert list(_error(response, 400)["fields"]) == ["user"]


@pytest.mark.parametrize("digits", NON_ASCII_DIGITS)
def test_non_ascii_digits_as_a_history_page_show_the_first_page(client, user, digits):
    client.force_login(user)
    assert client.get("/history/", {"page": digits}).status_code == 200


@pytest.mark.parametrize(("method", "suffix"), [
    ("get", "/{id}/images/0.json"), ("get", "/{id}/images/0/thumbnail/small.json"), ("post", "/{id}/cancel.json"),
    ("post", "/generate.json"), ("delete", "/{id}.json"), ("get", "/{id}.json"), ("get", ".json"),
    ("post", "/{id}/regenerate.json"), ("get", "/models.json"),
])
def test_format_suffixes_are_json_404s(api, user, make_generation, method, suffix):
    from generation.states import Status

    done = make_generation(user, Status.COMPLETED, images=1)
    path = "/api/v1/comfyui" + suffix.format(id=done.pk)
    assert _error(getattr(api, method)(path, {}, format="json"), 404)["code"] == "not_found"


def test_a_nul_byte_in_a_token_is_401(client, db):
    response = client.get("/api/v1/comfyui/", HTTP_AUTHORIZATION="Token abc\x00def")
    assert _error(response, 401)["code"] == "authentication_failed"


@pytest.mark.parametrize("key", ["abc\x00def" * 4, "x" * 40, "0" * 39, "é" * 40])
def test_malformed_tokens_are_401_without_a_query(client, db, key, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/api/v1/comfyui/", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 401


def test_a_nul_byte_in_the_session_cookie_is_no_session(client, user):
    client.cookies["sessionid"] = "a" * 16 + "\x00" + "b" * 15
    assert client.get("/history/").status_code == 302  # to the login page, as for anyone without a session
    assert _error(client.get("/api/v1/comfyui/"), 401)["code"] == "not_authenticated"


def test_regenerate_refuses_unknown_fields_like_submit(api, user, make_generation):
    from generation.states import Status

    original = make_generation(user, Status.COMPLETED)
    response = api.post(f"/api/v1/comfyui/{original.pk}/regenerate/", {"same_seed": True, "extra": 1}, format="json")
    assert _error(response, 400)["fields"] == {"extra": ["Unknown field."]}
    submit = api.post(GENERATE, {"prompt": "x", "checkpoint_model": "c", "extra": 1}, format="json")
    assert _error(submit, 400)["fields"]["extra"] == ["Unknown field."]


def test_the_token_endpoint_refuses_unknown_fields(client, db):
    response = client.post("/api/v1/auth/token/", {"username": "a", "password": "b", "admin": True},
                           content_type="application/json")
    assert _error(response, 400)["fields"] == {"admin": ["Unknown field."]}


@pytest.mark.parametrize("body", [
    {"prompt": "x", "checkpoint_model": "c" * 100_000},
    {"prompt": "x", "checkpoint_model": "tiny-sd15-random.safetensors",
     "sampler_params": {"sampler_name": "s" * 100_000}},
    {"prompt": "x", "checkpoint_model": "tiny-sd15-random.safetensors", "k" * 100_000: 1},
])
def test_echoed_values_are_truncated(api, checkpoint, body):
    response = api.post(GENERATE, body, format="json")
    error = _error(response, 400)
    assert len(response.content) < 2_000
    assert all("…" in text for texts in error["fields"].values() for text in texts if len(text) > 100)


def test_echoed_values_are_truncated_on_the_generate_page(client, user, checkpoint):
    client.force_login(user)
    response = client.post("/", {"prompt": "x", "checkpoint_model": "c" * 100_000, "idempotency_key": "k"})
    assert response.status_code == 400 and b"c" * 1000 not in response.content  # the message quotes 300


def test_schema_and_docs_need_a_login_when_not_public(client, user, settings):
    settings.API_DOCS_PUBLIC = False
    assert client.get("/api/schema/", HTTP_ACCEPT="application/json").status_code == 401
    docs = client.get("/api/docs/")
    assert docs.status_code == 302 and docs["Location"].startswith("/accounts/login/?next=/api/docs/")
    client.force_login(user)
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/docs/").status_code == 200


def test_schema_and_docs_are_public_when_configured(client, db, settings):
    settings.API_DOCS_PUBLIC = True
    assert client.get("/api/schema/").status_code == 200 and client.get("/api/docs/").status_code == 200
