"""A bounded schemathesis run over the served OpenAPI schema, against the Django app via WSGI:
no input produces a 500, and every response matches the documented status codes, content types,
headers and body schemas. Both valid (positive) and schema-violating (negative) inputs are sent."""

import pytest
import schemathesis
import werkzeug.test
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from generation.states import Status

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
EXAMPLES_PER_OPERATION = 12


@pytest.fixture
def keep_test_connection():
    """Like Django's test client: requests must not close the test's DB connection (its transaction)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def short_streams(settings):
    """Event streams end after a moment, so each fuzzed call of one returns."""
    settings.LIVE = {**settings.LIVE, "STREAM_MAX_SECONDS": 0.2, "HEARTBEAT_SECONDS": 0.1}


def test_schema_is_served_and_public(client, settings, db):
    settings.API_DOCS_PUBLIC = True  # the development default (tests/generation/api/test_errors.py: production)
    response = client.get("/api/schema/")
    assert response.status_code == 200 and b"/api/v1/comfyui/generate/" in response.content
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"drf_spectacular_sidecar/swagger-ui-dist" in docs.content and b"cdn.jsdelivr" not in docs.content


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("who", ["user", "staff"])
def test_fuzz_every_operation(db, keep_test_connection, user, staff_user, lora, make_generation, mode, who):
    """Every operation as a user; the staff-only ones (publishing workflows, backends) as staff too."""
    make_generation(user, Status.COMPLETED, images=1)
    caller = staff_user if who == "staff" else user
    headers = {"Authorization": f"Token {Token.objects.create(user=caller).key}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 29
    if who == "staff":
        operations = [op for op in operations if "/workflows/" in op.path or "/backends/" in op.path]
    failures = []
    if mode == GenerationMode.NEGATIVE:  # nothing schema-violating can be built for an operation without inputs
        operations = [op for op in operations if op.definition.raw.get("parameters") or op.definition.raw.get(
            "requestBody")]
    for operation in operations:
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            check()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)


# --- what the adversarial pass found beyond the schema: format suffixes and non-ASCII digits ----------

SUFFIXES = [".json", ".api", ".xml", ".yaml", ".json/", "/.json"]
NON_ASCII_DIGITS = ["²", "①", "٣", "１２", "𝟗", "٠٠١", "-²"]
NUMERIC_QUERY = ["page", "page_size", "user", "cursor", "ordering", "limit", "offset", "index"]


def _error_shape(response):
    body = response.json() if callable(response.json) else response.json
    return set(body) == {"error"} and {"code", "message", "fields"} <= set(body["error"])


def test_format_suffixes_and_non_ascii_digits_on_every_route(db, keep_test_connection, user, staff_user, lora,
                                                            make_generation, valid_params):
    done = make_generation(user, Status.COMPLETED, images=1)
    token = Token.objects.create(user=staff_user).key  # staff: ?user= is read, not refused outright
    headers = {"Authorization": f"Token {token}"}
    app = get_wsgi_application()
    schema = schemathesis.openapi.from_wsgi("/api/schema/", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    values = {"id": str(done.pk), "index": "0", "size": "small", "slug": "txt2img", "version": "1"}
    bodies = {"/api/v1/comfyui/generate/": valid_params}
    api = werkzeug.test.Client(app)  # through WSGI like schemathesis (Django's test client would close our connection)
    failures, sent = [], 0

    def check(what, response):
        nonlocal sent
        sent += 1
        status = response.status_code
        if status >= 500:
            failures.append(f"{what}: {status}")
        elif status >= 400 and not _error_shape(response):
            failures.append(f"{what}: {status} without the JSON error shape")

    for operation in operations:
        method, template = operation.method.lower(), operation.path
        names = [p.name for p in operation.iter_parameters() if p.location == "path"]
        query_names = [p.name for p in operation.iter_parameters() if p.location == "query"]
        path = template.format(**{name: values[name] for name in names})
        body = bodies.get(template, {})
        payload = {"body": body, "media_type": "application/json"} if method == "post" else {"body": NOT_SET}
        for suffix in SUFFIXES:  # not in the schema, so asked for directly
            target = path.rstrip("/") + suffix
            check(f"{method.upper()} {target}", api.open(target, method=method.upper(), json=body, headers=headers))
        for digits in NON_ASCII_DIGITS:
            for name in names:
                case = operation.Case(path_parameters={**{n: values[n] for n in names}, name: digits}, **payload)
                check(f"{method.upper()} {template} {name}={digits}", case.call(headers=headers))
            for name in sorted(set(query_names + NUMERIC_QUERY)):
                case = operation.Case(path_parameters={n: values[n] for n in names}, query={name: digits},
                                      **payload)
                check(f"{method.upper()} {template} ?{name}={digits}", case.call(headers=headers))
            if method == "post":
                case = operation.Case(path_parameters={n: values[n] for n in names},
                                      headers={"Idempotency-Key": digits}, **payload)
                check(f"POST {template} Idempotency-Key={digits}", case.call(headers=headers))
    assert sent > 800
    assert not failures, "\n".join(failures)
