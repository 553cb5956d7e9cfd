"""Rate counters in the database, and the client address they are counted by."""

import pytest
from django.test import RequestFactory

from generation.throttling import RateCounter, client_address, hit, purge_stale_counters


@pytest.mark.parametrize("proxies, forwarded, expected", [
    (0, None, "192.0.2.1"),
    (0, "10.9.0.1", "192.0.2.1"),                        # no proxy: the header is the client's own words
    (1, None, "192.0.2.1"),
    (1, "203.0.113.5", "203.0.113.5"),
    (1, "10.9.0.1, 203.0.113.5", "203.0.113.5"),          # what the client wrote comes first, nginx appends
    (2, "10.9.0.1, 203.0.113.5, 198.51.100.2", "203.0.113.5"),  # load balancer, then nginx
    (2, "203.0.113.5", "203.0.113.5"),
    (1, " , ", "192.0.2.1"),
])
def test_client_address(settings, proxies, forwarded, expected):
    settings.TRUSTED_PROXY_COUNT = proxies
    extra = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded is not None else {}
    assert client_address(RequestFactory().get("/", REMOTE_ADDR="192.0.2.1", **extra)) == expected


def test_hits_count_per_window_and_say_when_it_ends(db):
    assert hit("auth", "a", period=60, now=1200.5) == (1, 60)
    assert hit("auth", "a", period=60, now=1230.0) == (2, 30)
    assert hit("auth", "b", period=60, now=1230.0) == (1, 30)
    assert hit("submit", "a", period=60, now=1230.0) == (1, 30)
    assert hit("auth", "a", period=60, now=1261.0) == (1, 59)   # a new window starts from 1
    assert hit("auth", "a", period=60, now=1259.0) == (2, 61)   # a lagging clock counts against the newer one


def test_stale_counters_are_purged(db):
    hit("auth", "old", period=60, now=1000.0)
    hit("auth", "new", period=60, now=1000.0 + 86400 * 3)
    assert purge_stale_counters(now=1000.0 + 86400 * 3) == 1
    assert list(RateCounter.objects.values_list("who", flat=True)) == ["new"]
