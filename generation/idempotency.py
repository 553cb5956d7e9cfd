"""Idempotency keys: a retried POST creates nothing new (the IETF httpapi ``Idempotency-Key`` draft).

The rules (also in docs/api.md):

- A key belongs to one user and one operation (``submit``, ``regenerate``): the same key used by
  someone else, or on another operation, is unrelated.
- The call that creates a request stores an :class:`IdempotencyRecord` in the same transaction,
  with a fingerprint of the call: the operation, its target (the request being regenerated) and
  the body as parsed JSON with sorted keys — so spacing and key order do not matter.
- Repeating the key with the same fingerprint creates nothing and answers what the first call
  answered: 201 with that request (as it is now), marked ``Idempotent-Replayed: true``. A repeat
  that arrives while the first is still running waits for it and gets the same.
- Repeating it with a different fingerprint is refused (422 ``idempotency_key_reused``).
- A refused call (any 4xx) stores nothing, so it can be fixed and retried under the same key.
- A key is kept ``IDEMPOTENCY_KEY_HOURS`` (24 by default) after its first use, then forgotten (the
  reconciler purges it; a lookup ignores it already). Deleting the request forgets its key too.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from generation.errors import IdempotencyKeyReused

HEADER = "Idempotency-Key"
SUBMIT, REGENERATE = "submit", "regenerate"


class IdempotencyRecord(models.Model):
    """One key's first use: who, for what, the call's fingerprint, and the request it created."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    operation = models.CharField(max_length=16, choices=[(SUBMIT, SUBMIT), (REGENERATE, REGENERATE)])
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="sha256 of the call; empty for keys stored before "
                                                            "fingerprints existed (they match any call)")
    request = models.ForeignKey("generation.GenerationRequest", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        app_label = "generation"
        constraints = [models.UniqueConstraint(fields=["user", "operation", "key"],
                                               name="idempotency_unique_user_operation_key")]

    def __str__(self):
        return f"{self.operation} {self.key!r} → {self.request_id}"


def fingerprint(*, operation, body, target=None):
    """The sha256 of a call: ``body`` is parsed JSON (a dict), compared with sorted keys."""
    if hasattr(body, "dict"):  # a QueryDict (an empty body) → a plain dict
        body = body.dict()
    canonical = json.dumps({"operation": operation, "target": None if target is None else str(target),
                            "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Idempotency:
    """A call made under a key: what :func:`generation.services.submit_generation` needs to honour it."""

    operation: str
    key: str
    fingerprint: str

    @classmethod
    def of(cls, *, operation, key, body, target=None):
        """The call's :class:`Idempotency`, or None when it carries no key."""
        if key is None:
            return None
        return cls(operation=operation, key=key,
                   fingerprint=fingerprint(operation=operation, body=body, target=target))

    def original(self, user):
        """The request an earlier call under this key created, or None (never used, or expired).

        Raises :class:`~generation.errors.IdempotencyKeyReused` when that call was a different one.
        """
        record = (IdempotencyRecord.objects.select_related("request")
                  .filter(user=user, operation=self.operation, key=self.key).first())
        if record is None:
            return None
        if record.created_at < timezone.now() - key_lifetime():
            record.delete()  # expired: the key is free again
            return None
        if record.fingerprint and record.fingerprint != self.fingerprint:
            raise IdempotencyKeyReused(HEADER)
        return record.request

    def remember(self, *, user, request):
        """Store the key's first use; call inside the transaction that creates ``request``
        (a concurrent first use of the same key makes it raise ``IntegrityError``)."""
        IdempotencyRecord.objects.create(user=user, operation=self.operation, key=self.key,
                                         fingerprint=self.fingerprint, request=request)


def key_lifetime():
    return timedelta(hours=settings.IDEMPOTENCY_KEY_HOURS)


def purge_expired_keys(now=None):
    """Forget keys older than their lifetime; return how many."""
    now = now or timezone.now()
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=now - key_lifetime()).delete()
    return deleted
