"""The SSE endpoints: contents for a request that completes, fails or is cancelled, over each fan-out
transport; resuming with Last-Event-ID; who may read what; previews."""

import pytest
from django.urls import reverse

from generation import lifecycle
from generation.live import bus, previews
from generation.live.log import Cursor
from generation.models import RunState
from generation.states import Status
from tests.generation.live.conftest import parse_frames

TRANSPORTS = ["postgres", "redis", "poll"]


def events_url(request):
    return reverse("generation-events", kwargs={"pk": request.pk})


def run(request, *, fraction, step, total=4):
    """What a worker does while sampling: the RunState write and its announcement."""
    RunState.objects.filter(request_id=request.pk).update(progress=fraction, current_step=step, total_steps=total,
                                                          current_node="KSampler (3)")
    bus.publish({"k": "progress", "u": request.user_id, "r": str(request.pk), "f": fraction, "st": step, "t": total,
                 "n": "KSampler (3)"})


def start(request):
    assert lifecycle.transition(request.pk, Status.RUNNING, expect={Status.QUEUED}, attempts=1)
    RunState.objects.update_or_create(request_id=request.pk, defaults={"attempt": 1})


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_request_that_completes(transport, live_settings, read_stream, api, user, make_generation):
    live_settings(transport)
    request = make_generation(user, Status.QUEUED)
    reader = read_stream(api.get(events_url(request)))
    first = reader.until(lambda e: e[0] == "status")[0]
    assert first[2] == {"id": str(request.pk), "status": "queued", "queue_position": 1, "waiting_reason": first[2][
        "waiting_reason"]}
    bus.hub.connected.wait(5)
    start(request)
    reader.until(lambda e: e[0] == "status" and e[2]["status"] == "running")
    for step in (1, 2, 3):
        run(request, fraction=step / 4, step=step)
        reader.until(lambda e, step=step: e[0] == "progress" and e[2]["step"] == step)
    storage_request = make_generation(user, Status.COMPLETED, images=1)  # real files to point at
    assert lifecycle.transition(request.pk, Status.COMPLETED, expect={Status.RUNNING},
                                outputs=storage_request.outputs, thumbnails=storage_request.thumbnails)
    events = reader.finish()
    names = [name for name, _, _ in events]
    assert names[0] == "status" and names[-1] == "completed"
    assert names.count("completed") == 1 and "progress" in names
    completed = events[-1][2]
    assert completed["id"] == str(request.pk) and completed["status"] == "completed"
    assert completed["images"][0]["url"].startswith("http://testserver/api/v1/comfyui/")
    progress = [data["fraction"] for name, _, data in events if name == "progress"]
    assert progress == sorted(progress) and progress[-1] == 0.75
    assert all(event_id for _, event_id, _ in events)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("ending, expected", [(Status.FAILED, {"status": "failed", "error": "ComfyUI refused"}),
                                              (Status.CANCELLED, {"status": "cancelled"})])
def test_a_request_that_fails_or_is_cancelled(ending, expected, live_settings, read_stream, api, user,
                                              make_generation):
    live_settings("postgres")
    request = make_generation(user, Status.RUNNING)
    reader = read_stream(api.get(events_url(request)))
    reader.until(lambda e: e[0] == "status")
    fields = {"error": "ComfyUI refused"} if ending == Status.FAILED else {}
    assert lifecycle.transition(request.pk, ending, **fields)
    last = reader.finish()[-1]
    assert last[0] == str(ending) and last[2] == {"id": str(request.pk), **expected}


@pytest.mark.django_db(transaction=True)
def test_resume_with_last_event_id_has_no_gap_and_no_repeat(live_settings, read_stream, api, user, make_generation):
    live_settings("postgres")
    request = make_generation(user, Status.PENDING)
    lifecycle.transition(request.pk, Status.QUEUED, expect={Status.PENDING})
    reader = read_stream(api.get(events_url(request)))
    queued = reader.until(lambda e: e[0] == "status")[0]
    reader.close()  # the client goes away; meanwhile the request runs and ends
    start(request)
    lifecycle.transition(request.pk, Status.FAILED, error="out of memory")
    resumed = read_stream(api.get(events_url(request), HTTP_LAST_EVENT_ID=queued[1])).finish()
    assert [(name, data["status"]) for name, _, data in resumed] == [("status", "running"), ("failed", "failed")]
    # past the terminal event: 204, which tells EventSource to stop reconnecting
    assert api.get(events_url(request), HTTP_LAST_EVENT_ID=resumed[-1][1]).status_code == 204
    # the query-string form is the same cursor
    again = read_stream(api.get(events_url(request) + f"?last_event_id={queued[1]}")).finish()
    assert [name for name, _, _ in again] == ["status", "failed"]


def test_a_finished_request_sends_its_terminal_event_and_ends(api, user, make_generation):
    request = make_generation(user, Status.COMPLETED, images=2)
    response = api.get(events_url(request))
    events = parse_frames(b"".join(response.streaming_content).decode())
    assert [name for name, _, _ in events] == ["completed"]
    assert len(events[0][2]["images"]) == 2
    assert response["Cache-Control"] == "no-cache, no-store" and response["X-Accel-Buffering"] == "no"


def test_another_users_request_is_404(client_for, user, other_user, make_generation):
    request = make_generation(user, Status.QUEUED)
    for url in (events_url(request), reverse("generation-preview", kwargs={"pk": request.pk})):
        response = client_for(other_user).get(url, HTTP_ACCEPT="text/event-stream")
        assert response.status_code == 404 and response.json()["error"]
    assert client_for(None).get(events_url(request)).status_code in (401, 403)


@pytest.mark.parametrize("bad", ["abc", "1:x", "-3", "9" * 30])
def test_a_malformed_last_event_id_is_a_400_naming_it(bad, api, user, make_generation):
    request = make_generation(user, Status.QUEUED)
    response = api.get(events_url(request), HTTP_LAST_EVENT_ID=bad)
    assert response.status_code == 400 and "Last-Event-ID" in response.json()["error"]["fields"]


@pytest.mark.django_db(transaction=True)
def test_the_stream_of_all_my_requests(live_settings, read_stream, api, user, other_user, make_generation):
    live_settings("redis")
    running = make_generation(user, Status.RUNNING, progress=0.5, current_step=2, total_steps=4)
    queued = make_generation(user, Status.QUEUED)
    theirs = make_generation(other_user, Status.QUEUED)
    reader = read_stream(api.get(reverse("generation-all-events")))
    opening = reader.until(lambda e: e[0] == "progress")
    assert opening[0][2] == {"id": str(running.pk), "fraction": 0.5, "step": 2, "total_steps": 4, "node": ""}
    bus.hub.connected.wait(5)
    lifecycle.transition(theirs.pk, Status.CANCELLED)
    lifecycle.transition(queued.pk, Status.CANCELLED)
    lifecycle.transition(running.pk, Status.FAILED, error="boom")
    reader.until(lambda e: e[0] == "failed")
    seen = {data["id"] for _, _, data in reader.events}
    assert seen == {str(running.pk), str(queued.pk)}  # never another user's
    reader.close()
    # resuming from the opening state's cursor replays both changes, once
    cursor = Cursor.parse(opening[0][1])
    replay = read_stream(api.get(reverse("generation-all-events"), HTTP_LAST_EVENT_ID=str(cursor)))
    replay.until(lambda e: e[0] == "failed")
    assert [name for name, _, _ in replay.events] == ["cancelled", "failed"]


@pytest.mark.django_db(transaction=True)
def test_queue_positions_move_live(live_settings, read_stream, api, user, other_user, make_generation,
                                   reachable_backend):
    live_settings("postgres")
    ahead = make_generation(other_user, Status.QUEUED)
    mine = make_generation(user, Status.QUEUED)
    reader = read_stream(api.get(events_url(mine)))
    assert reader.until(lambda e: e[0] == "status")[0][2]["queue_position"] == 2
    bus.hub.connected.wait(5)
    start(ahead)  # the other user's request leaves the queue
    reader.until(lambda e: e[0] == "status" and e[2]["queue_position"] == 1)


def test_preview_is_served_to_its_owner_only(api, client_for, user, staff_user, make_generation,
                                             django_capture_on_commit_callbacks):
    request = make_generation(user, Status.RUNNING)
    url = reverse("generation-preview", kwargs={"pk": request.pk})
    assert api.get(url).status_code == 404  # none yet
    assert previews.store(request.pk, user.pk, "image/jpeg", b"\xff\xd8first") == 1
    assert previews.store(request.pk, user.pk, "image/jpeg", b"\xff\xd8second") == 2
    response = api.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    assert response.content == b"\xff\xd8second" and response["Cache-Control"] == "no-store"
    assert client_for(staff_user).get(url).status_code == 404
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.transition(request.pk, Status.CANCELLED)
    assert not previews.numbers([request.pk])  # discarded when the request ended
    assert api.get(url).status_code == 404


def test_backends_stream_is_for_staff(client_for, user, staff_user, reachable_backend):
    assert client_for(user).get(reverse("backend-events")).status_code == 403
    response = client_for(staff_user).get(reverse("backend-events"))
    assert response.status_code == 200
    first = next(iter(response.streaming_content)).decode()
    events = parse_frames(first)
    assert events[0][0] == "backends"
    assert events[0][2] == client_for(staff_user).get(reverse("backends")).json()
    response.close()
