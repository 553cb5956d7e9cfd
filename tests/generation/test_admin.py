"""The read-only GenerationRequest and BackendState admins, as a staff user."""

import pytest
from django.urls import reverse
from django.utils import timezone

from generation.models import BackendState, GenerationRequest
from generation.states import Status


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client


@pytest.fixture
def failed_request(user, checkpoint):
    return GenerationRequest.objects.create(
        user=user, prompt="a <b>bold</b> lighthouse", checkpoint_model=checkpoint.name, status=Status.FAILED,
        finished_at=timezone.now(), backend="http://b1:8188", error="KSampler: cfg too high",
        error_detail={"node_id": "3", "exception_type": "ValueError"},
        graph={"3": {"class_type": "KSampler", "inputs": {"cfg": 999}}})


def test_list_filters_and_search(staff_client, failed_request, user, checkpoint):
    other = GenerationRequest.objects.create(user=user, prompt="a quiet forest", checkpoint_model=checkpoint.name)
    url = reverse("admin:generation_generationrequest_changelist")
    response = staff_client.get(url)
    assert response.status_code == 200
    body = response.content.decode()
    assert "status__exact" in body and "backend" in body and "created_at__gte" in body
    assert "Add generation request" not in body
    assert list(staff_client.get(url, {"status__exact": "failed"}).context["cl"].result_list) == [failed_request]
    assert list(staff_client.get(url, {"q": "forest"}).context["cl"].result_list) == [other]
    assert list(staff_client.get(url, {"q": "alice"}).context["cl"].result_list) == [other, failed_request]
    assert list(staff_client.get(url, {"q": str(failed_request.pk)}).context["cl"].result_list) == [failed_request]


def test_backend_and_workflow_filters_list_known_values_without_scanning_history(staff_client, failed_request,
                                                                                user, checkpoint):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    BackendState.objects.create(url="http://b1:8188")
    BackendState.objects.create(url="http://b2:8188")
    never = GenerationRequest.objects.create(user=user, prompt="waiting", checkpoint_model=checkpoint.name)
    url = reverse("admin:generation_generationrequest_changelist")
    with CaptureQueriesContext(connection) as captured:
        response = staff_client.get(url)
    assert not [q["sql"] for q in captured.captured_queries if "DISTINCT" in q["sql"].upper()]
    body = response.content.decode()
    assert "?backend=http%3A%2F%2Fb2%3A8188" in body and "never dispatched" in body
    assert "?workflow_slug=img2img" in body
    assert list(staff_client.get(url, {"backend": "http://b1:8188"}).context["cl"].result_list) == [failed_request]
    assert list(staff_client.get(url, {"backend": "http://b2:8188"}).context["cl"].result_list) == []
    assert list(staff_client.get(url, {"backend": "none"}).context["cl"].result_list) == [never]
    assert list(staff_client.get(url, {"workflow_slug": "img2img"}).context["cl"].result_list) == []
    assert len(staff_client.get(url, {"workflow_slug": "txt2img"}).context["cl"].result_list) == 2


def test_detail_is_read_only_with_pretty_json(staff_client, failed_request):
    url = reverse("admin:generation_generationrequest_change", args=[failed_request.pk])
    response = staff_client.get(url)
    assert response.status_code == 200
    body = response.content.decode()
    assert "&quot;class_type&quot;: &quot;KSampler&quot;" in body  # indented JSON, escaped
    assert "&quot;exception_type&quot;: &quot;ValueError&quot;" in body
    assert "&lt;b&gt;bold&lt;/b&gt;" in body and "<b>bold</b>" not in body
    assert 'name="_save"' not in body
    response = staff_client.post(url, {"prompt": "changed"})
    assert response.status_code == 403
    failed_request.refresh_from_db()
    assert failed_request.prompt == "a <b>bold</b> lighthouse"


def test_no_add_or_delete(staff_client, failed_request):
    assert staff_client.get(reverse("admin:generation_generationrequest_add")).status_code == 403
    delete = reverse("admin:generation_generationrequest_delete", args=[failed_request.pk])
    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    assert GenerationRequest.objects.filter(pk=failed_request.pk).exists()


def test_backend_state_list(staff_client, db):
    BackendState.objects.create(url="http://b1:8188", is_healthy=False, last_error="connection refused")
    response = staff_client.get(reverse("admin:generation_backendstate_changelist"))
    assert response.status_code == 200
    assert "connection refused" in response.content.decode()
    assert staff_client.get(reverse("admin:generation_backendstate_add")).status_code == 403


def test_non_staff_cannot_see_requests(client, user, failed_request):
    client.force_login(user)
    response = client.get(reverse("admin:generation_generationrequest_changelist"))
    assert response.status_code == 302
