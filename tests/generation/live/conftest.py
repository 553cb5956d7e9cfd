"""Fixtures for live events: a fan-out transport of choice, a fresh hub per test, and a reader that
consumes a streaming response in a thread (frames parsed into ``(event, id, data)``)."""

import json
import os
import queue
import threading
import time

import pytest
from django.db import connection

REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture
def live_settings(settings):
    """Short heartbeats and polls; returns a function that switches the fan-out transport."""
    settings.LIVE = {**settings.LIVE, "HEARTBEAT_SECONDS": 0.5, "POLL_SECONDS": 0.05, "STREAM_MAX_SECONDS": 60}

    def use(mode):
        settings.LIVE = {**settings.LIVE, "FANOUT": mode}
        settings.REDIS_URL = REDIS_TEST_URL if mode == "redis" else None
        from generation.live import bus

        bus._redis_client = None
        return mode

    yield use
    from generation.live import bus

    bus.hub.stop()
    bus._redis_client = None


def parse_frames(text):
    """``[(event, id, data)]`` of the complete events in ``text`` (comments and retry lines skipped)."""
    events = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.split("\n"):
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            events.append((fields["event"], fields.get("id"), json.loads(fields["data"])))
    return events


class StreamReader:
    """Consumes a streaming response in a thread; :meth:`until` waits for an event."""

    def __init__(self, response):
        self.response = response
        self.chunks = queue.Queue()
        self.text = ""
        self.done = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for chunk in self.response.streaming_content:
                self.chunks.put(chunk.decode())
                if self.done:
                    break
        finally:
            self.chunks.put(None)
            connection.close()

    @property
    def events(self):
        return parse_frames(self.text)

    def until(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not any(predicate(e) for e in self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout}s; got {self.events}")
            try:
                chunk = self.chunks.get(timeout=left)
            except queue.Empty:
                continue
            if chunk is None:
                if not any(predicate(e) for e in self.events):
                    raise AssertionError(f"the stream ended without a matching event; got {self.events}")
                break
            self.text += chunk
        return [e for e in self.events if predicate(e)]

    def finish(self, timeout=10.0):
        """Read until the server ends the stream; return all events."""
        deadline = time.monotonic() + timeout
        while True:
            chunk = self.chunks.get(timeout=max(0.01, deadline - time.monotonic()))
            if chunk is None:
                return self.events
            self.text += chunk

    def close(self):
        self.done = True
        self.response.close()


@pytest.fixture
def read_stream():
    readers = []

    def read(response):
        assert response.status_code == 200, response.content
        assert response["Content-Type"].startswith("text/event-stream")
        reader = StreamReader(response)
        readers.append(reader)
        return reader

    yield read
    for reader in readers:
        reader.done = True
