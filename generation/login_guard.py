"""The login guard: password checks counted per client address and per username, with growing lockouts.

Every password check — ``POST /api/v1/auth/token/``, ``/accounts/login/`` and ``/admin/login/`` —
goes through :class:`GuardedModelBackend`, the only entry of ``AUTHENTICATION_BACKENDS``. Before
the password is looked at, the attempt is counted on two rows: the client's address
(:func:`generation.throttling.client_address`) and the username typed (whether or not such an
account exists, so a lockout tells nothing about which names are real). The counting happens
under row locks in the database, so the limits hold exactly across web processes and hosts,
concurrent guesses included: at most ``FAILURES_PER_*`` passwords are ever checked between lockouts.

- A row that reaches its limit is locked for ``LOCKOUT_SECONDS``, doubled for each further lockout
  (capped at ``LOCKOUT_MAX_SECONDS``); attempts while locked are refused without checking the
  password, and are not counted.
- A success clears the account's row (its owner proved the password) and gives the address its
  attempt back, but does not clear the address: logging in to one's own account between guesses
  at others must not reset the count.
- Attempts are forgotten after an hour without any, lockouts after a day.

A refused attempt answers 429 with ``Retry-After``: the API as a ``login_locked`` error, the login
pages with the form's message (:class:`LoginLockoutMiddleware` sets the status).
"""

import hashlib
import logging
import math
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from generation.errors import LoginLocked
from generation.throttling import client_address

logger = logging.getLogger(__name__)

FORGET_ATTEMPTS_AFTER = timedelta(hours=1)
FORGET_LOCKOUTS_AFTER = timedelta(days=1)
ADDRESS, ACCOUNT = "address", "account"


class LoginCounter(models.Model):
    """Password checks of one client address or one username since its last lockout."""

    kind = models.CharField(max_length=8, choices=[(ADDRESS, "client address"), (ACCOUNT, "username")])
    key = models.CharField(max_length=160)
    attempts = models.PositiveIntegerField(default=0, help_text="Checked (or being checked) since the last lockout")
    lockouts = models.PositiveIntegerField(default=0, help_text="Lockouts in a row; the next lasts twice the last")
    locked_until = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField()

    class Meta:
        app_label = "generation"
        constraints = [models.UniqueConstraint(fields=["kind", "key"], name="logincounter_unique_kind_key")]

    def __str__(self):
        return f"{self.kind} {self.key}: {self.attempts} attempts, {self.lockouts} lockouts"


def _account_key(username):
    # usernames are at most 150 characters; anything longer (or unstorable) is counted by its digest
    if len(username) <= 150 and "\x00" not in username:
        return username
    return "sha256:" + hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()


def _limit(kind):
    guard = settings.LOGIN_GUARD
    return guard["FAILURES_PER_ADDRESS"] if kind == ADDRESS else guard["FAILURES_PER_ACCOUNT"]


def lockout_seconds(lockouts):
    """How long the ``lockouts``-th lockout in a row lasts."""
    guard = settings.LOGIN_GUARD
    return min(guard["LOCKOUT_MAX_SECONDS"], guard["LOCKOUT_SECONDS"] * 2 ** min(lockouts - 1, 30))


@dataclass(frozen=True)
class Attempt:
    """One password check being made: the counters it was reserved on."""

    address: str
    account: str | None

    @property
    def keys(self):
        return [(ADDRESS, self.address)] + ([(ACCOUNT, self.account)] if self.account is not None else [])


def _rows(attempt, now):
    """The attempt's counters, locked, in one fixed order (address first: no deadlock between two attempts)."""
    rows = []
    for kind, key in attempt.keys:
        row, _ = LoginCounter.objects.select_for_update().get_or_create(
            kind=kind, key=key, defaults={"last_attempt_at": now})
        if row.locked_until is None or row.locked_until <= now:
            if now - row.last_attempt_at > FORGET_ATTEMPTS_AFTER:
                row.attempts = 0
            if now - max(row.last_attempt_at, row.locked_until or row.last_attempt_at) > FORGET_LOCKOUTS_AFTER:
                row.lockouts = 0
        rows.append(row)
    return rows


def _lock(row, now):
    row.lockouts += 1
    row.attempts = 0
    row.locked_until = now + timedelta(seconds=lockout_seconds(row.lockouts))
    logger.warning("login guard: %s %r locked until %s (lockout %s in a row)", row.kind, row.key,
                   row.locked_until.isoformat(timespec="seconds"), row.lockouts)


def _retry_after(rows, now):
    return max(math.ceil((row.locked_until - now).total_seconds()) for row in rows
               if row.locked_until and row.locked_until > now)


def begin_attempt(*, address, username, now=None):
    """Reserve one password check for ``address`` and ``username``; return the :class:`Attempt`.

    Raises :class:`~generation.errors.LoginLocked` when either is locked out, or has used all its
    attempts (some may still be in flight: the lockout starts now).
    """
    now = now or timezone.now()
    attempt = Attempt(address=address, account=None if username is None else _account_key(username))
    with transaction.atomic():
        rows = _rows(attempt, now)
        locked = any(row.locked_until and row.locked_until > now for row in rows)
        if not locked:
            for row in rows:
                if row.attempts >= _limit(row.kind):
                    _lock(row, now)
                    locked = True
        if not locked:
            for row in rows:
                row.attempts += 1
                row.last_attempt_at = now
        for row in rows:
            row.save()
    if locked:
        raise LoginLocked(_retry_after(rows, now))
    return attempt


def attempt_failed(attempt, *, now=None):
    """The password was wrong: lock what reached its limit. Returns the lockout's seconds, or None."""
    now = now or timezone.now()
    with transaction.atomic():
        rows = _rows(attempt, now)
        for row in rows:
            if row.attempts >= _limit(row.kind) and not (row.locked_until and row.locked_until > now):
                _lock(row, now)
                row.save()
    logger.info("login guard: failed login for %r from %s", attempt.account, attempt.address)
    return _retry_after(rows, now) if any(row.locked_until and row.locked_until > now for row in rows) else None


def attempt_succeeded(attempt):
    """The password was right: clear the account, give the address its attempt back."""
    LoginCounter.objects.filter(kind=ADDRESS, key=attempt.address).update(attempts=Greatest(F("attempts") - 1, 0))
    if attempt.account is not None:
        LoginCounter.objects.filter(kind=ACCOUNT, key=attempt.account).update(attempts=0, lockouts=0,
                                                                               locked_until=None)


def purge_idle_counters(now=None):
    """Delete counters with nothing left to remember (no lockout running, nothing in the last day)."""
    now = now or timezone.now()
    idle = LoginCounter.objects.filter(last_attempt_at__lt=now - FORGET_LOCKOUTS_AFTER).exclude(
        locked_until__gt=now - FORGET_LOCKOUTS_AFTER)
    deleted, _ = idle.delete()
    return deleted


class GuardedModelBackend(ModelBackend):
    """Django's ``ModelBackend`` with every password check counted by the login guard.

    A refused attempt sets ``request.login_locked_for`` (seconds) and raises ``PermissionDenied``,
    which makes ``django.contrib.auth.authenticate`` give up and answer ``None``. Calls without a
    request (``manage.py`` commands, the shell) are not counted.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if request is None or username is None or password is None:
            return super().authenticate(request, username=username, password=password, **kwargs)
        try:
            attempt = begin_attempt(address=client_address(request), username=str(username))
        except LoginLocked as exc:
            request.login_locked_for = exc.retry_after
            raise PermissionDenied(exc.message) from exc
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            locked_for = attempt_failed(attempt)
            if locked_for:
                request.login_locked_for = locked_for
        else:
            attempt_succeeded(attempt)
        return user


def locked_for(request):
    """Seconds the request's login was refused for, or None (the request may be DRF's or Django's)."""
    return getattr(getattr(request, "_request", request), "login_locked_for", None)


class LockoutMessageMixin:
    """Login forms say "try again in N minutes" instead of "wrong password" when the guard refused."""

    def get_invalid_login_error(self):
        seconds = locked_for(self.request)
        if seconds:
            return ValidationError(LoginLocked(seconds).message, code=LoginLocked.code)
        return super().get_invalid_login_error()


class GuardedAuthenticationForm(LockoutMessageMixin, AuthenticationForm):
    """``/accounts/login/``."""


class GuardedAdminAuthenticationForm(LockoutMessageMixin, AdminAuthenticationForm):
    """``/admin/login/``."""


class LoginLockoutMiddleware:
    """A login page re-shown because the guard refused answers 429 with ``Retry-After``."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        seconds = getattr(request, "login_locked_for", None)
        if seconds and response.status_code == 200:
            response.status_code = 429
            response.reason_phrase = "Too Many Requests"
            response["Retry-After"] = str(seconds)
        return response
