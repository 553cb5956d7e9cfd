"""The login guard on all three login paths: per address and per username, growing lockouts, exact
counts under concurrency, and a client address no header can fake (gunicorn runs: tests/genonaut/
test_brute_force.py)."""

import threading
from datetime import timedelta

import pytest
from django.contrib.auth import SESSION_KEY
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from generation.api.throttles import TokenThrottle
from generation.errors import LoginLocked
from generation.login_guard import ACCOUNT, ADDRESS, LoginCounter, attempt_failed, begin_attempt, lockout_seconds
from tests.concurrency import run_concurrently

TOKEN = "/api/v1/auth/token/"
LIMIT = 4


@pytest.fixture(autouse=True)
def small_limits(settings):
    settings.LOGIN_GUARD = {"FAILURES_PER_ACCOUNT": LIMIT, "FAILURES_PER_ADDRESS": 2 * LIMIT,
                            "LOCKOUT_SECONDS": 60, "LOCKOUT_MAX_SECONDS": 300}


def log_in(path, username, password, *, address="203.0.113.7", client=None, **headers):
    """One login attempt on ``path``: (status, logged in?)."""
    client = client or Client(REMOTE_ADDR=address)
    if path == TOKEN:
        response = client.post(TOKEN, {"username": username, "password": password},
                               content_type="application/json", **headers)
        return response, response.status_code == 200 and "token" in response.json()
    response = client.post(path, {"username": username, "password": password, "next": "/"}, **headers)
    return response, SESSION_KEY in client.session


PATHS = [TOKEN, "/accounts/login/", "/admin/login/"]


@pytest.mark.parametrize("path", PATHS)
def test_brute_force_then_the_right_password_is_refused(path, staff_user):
    statuses = [log_in(path, "staff", f"guess-{n}")[0].status_code for n in range(LIMIT + 3)]
    wrong = 400 if path == TOKEN else 200  # the API's error, or the form shown again with its error
    assert statuses == [wrong] * (LIMIT - 1) + [429] * 4  # the LIMIT-th failure starts the lockout
    response, logged_in = log_in(path, "staff", staff_user.raw_password)
    assert response.status_code == 429 and not logged_in
    assert 1 <= int(response["Retry-After"]) <= 60
    if path == TOKEN:
        assert response.json()["error"]["code"] == "login_locked" and not Token.objects.exists()
    else:
        assert b"Too many failed logins" in response.content
    # once the lockout is over, the owner gets in, and that clears the account's count
    LoginCounter.objects.update(locked_until=timezone.now() - timedelta(seconds=1))
    response, logged_in = log_in(path, "staff", staff_user.raw_password)
    assert logged_in, response.content[:500]
    assert LoginCounter.objects.get(kind=ACCOUNT, key="staff").attempts == 0


@pytest.mark.parametrize("path", PATHS)
def test_an_account_locks_whatever_address_the_guesses_come_from(path, staff_user):
    for n in range(LIMIT):
        log_in(path, "staff", "wrong", address=f"198.51.100.{n}")
    response, logged_in = log_in(path, "staff", staff_user.raw_password, address="192.0.2.200")
    assert response.status_code == 429 and not logged_in


@pytest.mark.parametrize("path", PATHS)
def test_an_address_locks_whatever_usernames_it_tries(path, staff_user):
    for n in range(2 * LIMIT):
        log_in(path, f"user{n}", "wrong")  # unknown names count too: a lockout tells nothing about them
    response, logged_in = log_in(path, "staff", staff_user.raw_password)
    assert response.status_code == 429 and not logged_in
    assert log_in(path, "staff", staff_user.raw_password, address="192.0.2.1")[1]  # another address is fine


@pytest.mark.parametrize("path", PATHS)
def test_x_forwarded_for_is_ignored_without_a_proxy(path, staff_user):
    """Defect 1: a new X-Forwarded-For per guess no longer buys new guesses."""
    statuses = [log_in(path, f"user{n}", "wrong", HTTP_X_FORWARDED_FOR=f"10.9.{n}.1")[0].status_code
                for n in range(2 * LIMIT + 2)]
    assert statuses[-2:] == [429, 429]
    assert set(LoginCounter.objects.filter(kind=ADDRESS).values_list("key", flat=True)) == {"203.0.113.7"}


def test_the_token_rate_throttle_ignores_x_forwarded_for_too(db, client, monkeypatch):
    monkeypatch.setattr(TokenThrottle, "THROTTLE_RATES", {"auth": "3/min"})
    codes = [client.post(TOKEN, {"username": f"u{n}", "password": "x"}, content_type="application/json",
                         HTTP_X_FORWARDED_FOR=f"10.9.{n}.1").status_code for n in range(4)]
    assert codes == [400, 400, 400, 429]


def test_behind_a_proxy_the_address_is_the_one_the_proxy_appended(settings, staff_user):
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = "127.0.0.1"
    for n in range(2 * LIMIT):  # the client writes its own X-Forwarded-For; nginx appends the real address
        log_in(TOKEN, f"user{n}", "wrong", address=proxy, HTTP_X_FORWARDED_FOR=f"10.9.{n}.1, 203.0.113.9")
    assert log_in(TOKEN, "staff", staff_user.raw_password, address=proxy,
                  HTTP_X_FORWARDED_FOR="203.0.113.9")[0].status_code == 429
    assert log_in(TOKEN, "staff", staff_user.raw_password, address=proxy,
                  HTTP_X_FORWARDED_FOR="203.0.113.10")[1]


def test_lockouts_grow_and_are_capped(db):
    assert [lockout_seconds(n) for n in range(1, 6)] == [60, 120, 240, 300, 300]
    for round_ in range(1, 4):
        for _ in range(LIMIT):
            attempt_failed(begin_attempt(address="203.0.113.7", username="alice"))
        row = LoginCounter.objects.get(kind=ACCOUNT, key="alice")
        assert row.lockouts == round_
        assert (row.locked_until - timezone.now()).total_seconds() == pytest.approx(lockout_seconds(round_), abs=5)
        with pytest.raises(LoginLocked):  # refused while locked, and not counted
            begin_attempt(address="203.0.113.8", username="alice")
        LoginCounter.objects.update(locked_until=timezone.now() - timedelta(seconds=1))


def test_attempts_and_lockouts_are_forgotten_after_a_quiet_while(db):
    now = timezone.now()
    for _ in range(LIMIT):
        attempt_failed(begin_attempt(address="203.0.113.7", username="alice", now=now), now=now)
    assert LoginCounter.objects.get(kind=ACCOUNT, key="alice").lockouts == 1
    later = now + timedelta(days=1, minutes=2)
    begin_attempt(address="203.0.113.7", username="alice", now=later)
    row = LoginCounter.objects.get(kind=ACCOUNT, key="alice")
    assert (row.attempts, row.lockouts) == (1, 0)


def test_a_success_clears_the_account_but_not_the_address(client, user):
    for _ in range(LIMIT - 1):
        log_in(TOKEN, "alice", "wrong", client=client)
    assert log_in(TOKEN, "alice", user.raw_password, client=client)[1]
    assert LoginCounter.objects.get(kind=ACCOUNT, key="alice").attempts == 0
    assert LoginCounter.objects.get(kind=ADDRESS, key="127.0.0.1").attempts == LIMIT - 1


def test_calls_without_a_request_are_not_counted(user):
    from django.contrib.auth import authenticate

    assert authenticate(username="alice", password=user.raw_password) == user
    assert not LoginCounter.objects.exists()


def test_an_overlong_or_unstorable_username_is_counted_by_its_digest(staff_user):
    log_in("/accounts/login/", "x" * 5000, "wrong")
    assert LoginCounter.objects.get(kind=ACCOUNT).key.startswith("sha256:")


@pytest.mark.django_db(transaction=True)
def test_concurrent_guesses_check_no_more_passwords_than_the_limit(staff_user, monkeypatch):
    from django.contrib.auth.backends import ModelBackend

    checked = []
    check = ModelBackend.authenticate
    monkeypatch.setattr(ModelBackend, "authenticate",
                        lambda self, *args, **kwargs: checked.append(1) or check(self, *args, **kwargs))
    barrier = threading.Barrier(10)
    statuses = []

    def guess():
        try:
            barrier.wait(timeout=10)
            statuses.append(log_in(TOKEN, "staff", "wrong", address="203.0.113.50")[0].status_code)
        finally:
            connection.close()

    run_concurrently([guess] * 10)
    assert len(checked) == LIMIT  # exactly: the rest were refused without looking at the password
    assert statuses.count(429) >= 10 - LIMIT and set(statuses) <= {400, 429}
