"""A bounded schemathesis run over the served OpenAPI schema, against the Django app via WSGI:
no input produces a 500, and every response matches the documented status codes, content types,
headers and body schemas. Both valid (positive) and schema-violating (negative) inputs are sent."""

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
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


def test_schema_is_served_and_public(client, db):
    response = client.get("/api/schema/")
    assert response.status_code == 200 and b"/api/v1/comfyui/generate/" in response.content
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"drf_spectacular_sidecar/swagger-ui-dist" in docs.content and b"cdn.jsdelivr" not in docs.content


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_every_operation(db, keep_test_connection, user, staff_user, lora, make_generation, mode):
    make_generation(user, Status.COMPLETED, images=1)
    headers = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 21
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
