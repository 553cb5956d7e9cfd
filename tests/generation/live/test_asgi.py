"""The documented production setup for real: the ASGI event server (uvicorn, deploy/systemd/
genonaut-events.service) with the documented environment. Several web processes: the stream is held by
one, the changes are made and published elsewhere (this test process, as a worker would); a stream
resumed on a restarted process misses nothing and repeats nothing."""

import queue
import threading
import time

import pytest
import requests
from rest_framework.authtoken.models import Token

from generation import lifecycle
from generation.live import bus
from generation.models import RunState
from generation.states import Status
from tests.generation.live.conftest import REDIS_TEST_URL, parse_frames
from tests.plugins.gunicorn import HOST

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


class Client:
    """A streaming HTTP client in a thread, as a browser's EventSource would hold the connection."""

    def __init__(self, url, token, last_event_id=None):
        headers = {"Host": HOST, "X-Forwarded-Proto": "https", "Authorization": f"Token {token}",
                   "Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self.response = requests.get(url, headers=headers, stream=True, timeout=(5, 30), allow_redirects=False)
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self.chunks = queue.Queue()
        self.text = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for chunk in self.response.iter_content(chunk_size=None):
                self.chunks.put(chunk.decode())
        except (requests.RequestException, AttributeError):  # closed by close()
            pass
        finally:
            self.chunks.put(None)

    def until(self, predicate, timeout=15.0):
        deadline = time.monotonic() + timeout
        while not any(predicate(e) for e in parse_frames(self.text)):
            try:
                chunk = self.chunks.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                chunk = ""
            if chunk is None or time.monotonic() > deadline:
                raise AssertionError(f"no matching event; got {parse_frames(self.text)}")
            self.text += chunk
        return parse_frames(self.text)

    def close(self):
        self.response.close()


def _use(settings, redis):
    settings.REDIS_URL = REDIS_TEST_URL if redis else None
    settings.LIVE = {**settings.LIVE, "FANOUT": "auto"}
    bus._redis_client = None


@pytest.mark.parametrize("redis", [True, False], ids=["redis", "postgres-notify"])
def test_two_web_processes_each_stream_what_a_worker_publishes(redis, settings, start_events_server, user,
                                                               make_generation):
    _use(settings, redis)
    env = {} if redis else {"REDIS_URL": ""}
    first, _ = start_events_server(**env)
    second, _ = start_events_server(**env)
    token = Token.objects.create(user=user).key
    request = make_generation(user, Status.QUEUED)
    one = Client(f"{first}/api/v1/comfyui/{request.pk}/events/", token)
    everything = Client(f"{second}/api/v1/comfyui/events/", token)
    for client in (one, everything):
        client.until(lambda e: e[0] == "status")
    time.sleep(0.5)  # both listeners are subscribed once their first frames went out; a margin for the LISTEN
    lifecycle.transition(request.pk, Status.RUNNING, expect={Status.QUEUED}, attempts=1)
    RunState.objects.create(request=request, attempt=1, progress=0.5, current_step=2, total_steps=4)
    bus.publish({"k": "progress", "u": user.pk, "r": str(request.pk), "f": 0.5, "st": 2, "t": 4, "n": "KSampler (3)"})
    lifecycle.transition(request.pk, Status.FAILED, error="out of memory")
    for client in (one, everything):
        events = client.until(lambda e: e[0] == "failed")
        assert [name for name, _, _ in events] == ["status", "status", "progress", "failed"]
        assert events[2][2] == {"id": str(request.pk), "fraction": 0.5, "step": 2, "total_steps": 4,
                                "node": "KSampler (3)"}
        client.close()


def test_resume_on_a_restarted_process_misses_nothing(settings, start_events_server, user, make_generation):
    _use(settings, True)
    base, process = start_events_server()
    token = Token.objects.create(user=user).key
    requests_ = [make_generation(user, Status.QUEUED) for _ in range(3)]
    client = Client(f"{base}/api/v1/comfyui/events/", token)
    opening = client.until(lambda e: e[0] == "status" and e[2]["id"] == str(requests_[2].pk))
    time.sleep(0.3)
    lifecycle.transition(requests_[0].pk, Status.CANCELLED)
    seen = client.until(lambda e: e[0] == "cancelled")
    last_id = seen[-1][1]
    process.kill()  # the web process goes away (a crash; a deploy's restart is gentler)
    process.wait(timeout=10)
    client.close()
    lifecycle.transition(requests_[1].pk, Status.CANCELLED)
    lifecycle.transition(requests_[2].pk, Status.RUNNING, expect={Status.QUEUED}, attempts=1)
    lifecycle.transition(requests_[2].pk, Status.FAILED, error="lost")
    again, _ = start_events_server()
    resumed = Client(f"{again}/api/v1/comfyui/events/", token, last_event_id=last_id)
    events = resumed.until(lambda e: e[0] == "failed")
    assert [(name, data["id"]) for name, _, data in events] == [
        ("cancelled", str(requests_[1].pk)), ("status", str(requests_[2].pk)), ("failed", str(requests_[2].pk))]
    assert len(opening) == 3
    resumed.close()


def _connections_to_this_database():
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cursor.fetchone()[0]


def test_many_open_streams_share_a_few_database_connections(settings, start_events_server, user, make_generation):
    _use(settings, True)
    base, _ = start_events_server(LIVE_DB_THREADS="2")
    token = Token.objects.create(user=user).key
    request = make_generation(user, Status.QUEUED)
    before = _connections_to_this_database()
    clients = [Client(f"{base}/api/v1/comfyui/{request.pk}/events/", token) for _ in range(12)]
    for client in clients:
        client.until(lambda e: e[0] == "status")
    # 12 streams opened and each read the database: the 2 pooled threads' connections (plus, for a moment,
    # a request's own while it authenticates) — not one per stream
    assert _connections_to_this_database() - before <= 3
    lifecycle.transition(request.pk, Status.CANCELLED)
    for client in clients:
        assert client.until(lambda e: e[0] == "cancelled")
        client.close()
