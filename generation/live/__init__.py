"""Live: what happens to a request, pushed to whoever watches it (issue 13, docs/api.md "Live events").

- :mod:`.log` — the durable part: every status change, written with the change, replayed after a
  client's ``Last-Event-ID``;
- :mod:`.bus` — the fan-out: workers publish, every web process listens (Redis pub/sub, PostgreSQL
  ``LISTEN/NOTIFY``, or polling the database) and hands messages to the streams it holds;
- :mod:`.previews` — the latest latent preview of each running request (Redis or a narrow table);
- :mod:`.streams` — the server-sent event streams themselves (sync under WSGI, async under ASGI).
"""
