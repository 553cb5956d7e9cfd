"""The latest latent preview of each running request: kept briefly, outside the main table.

With ``REDIS_URL`` in Redis (two keys per request, expiring after ``LIVE["PREVIEW_TTL_SECONDS"]``),
otherwise in :class:`~generation.models.LatestPreview` (one narrow row per running request, replaced in
place). Only the newest image is kept; the runner stores at most one every ``LIVE["PREVIEW_INTERVAL"]``
seconds and discards it when the request ends. The API serves it at ``/api/v1/comfyui/{id}/preview/``.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone

PREVIEW_IMAGE_TYPES = {"image/jpeg": "jpg", "image/png": "png"}


@dataclass(frozen=True)
class Preview:
    image_type: str
    data: bytes
    number: int
    updated_at: datetime


def _ttl():
    return settings.LIVE["PREVIEW_TTL_SECONDS"]


def _keys(request_id):
    prefix = f"{settings.Q_CLUSTER['name']}:preview:{request_id}"
    return prefix + ":image", prefix + ":number"


def _redis():
    from generation.live.bus import _redis as client

    return client()


def store(request_id, user_id, image_type, data):
    """Keep ``data`` as the request's latest preview; return its number (1 for the first)."""
    now = timezone.now()
    if settings.REDIS_URL:
        image_key, number_key = _keys(request_id)
        header = f"{image_type}|{now.timestamp():.6f}|".encode()
        pipe = _redis().pipeline()
        pipe.incr(number_key)
        pipe.expire(number_key, _ttl())
        pipe.set(image_key, header + data, ex=_ttl())
        number = pipe.execute()[0]
        return int(number)
    from django.db.models import F

    from generation.models import LatestPreview

    updated = LatestPreview.objects.filter(request_id=request_id).update(
        image_type=image_type, data=data, number=F("number") + 1, updated_at=now)
    if not updated:
        LatestPreview.objects.bulk_create(  # first preview (or a race with another: the upsert wins either way)
            [LatestPreview(request_id=request_id, user_id=user_id, image_type=image_type, data=data, number=1,
                           updated_at=now)],
            update_conflicts=True, unique_fields=["request"], update_fields=["image_type", "data", "updated_at"])
    return LatestPreview.objects.filter(request_id=request_id).values_list("number", flat=True).first() or 1


def latest(request_id):
    """The request's latest :class:`Preview`, or ``None`` (none yet, expired or discarded)."""
    if settings.REDIS_URL:
        image_key, number_key = _keys(request_id)
        raw, number = _redis().mget(image_key, number_key)
        if not raw:
            return None
        image_type, stamp, data = raw.split(b"|", 2)
        return Preview(image_type.decode(), bytes(data), int(number or 0),
                       datetime.fromtimestamp(float(stamp), tz=UTC))
    from generation.models import LatestPreview

    row = LatestPreview.objects.filter(request_id=request_id, updated_at__gte=timezone.now() - timedelta(
        seconds=_ttl())).first()
    return Preview(row.image_type, bytes(row.data), row.number, row.updated_at) if row else None


def numbers(request_ids):
    """``{request id: number of its latest preview}`` for those that have one (the polling fan-out)."""
    request_ids = [str(r) for r in request_ids]
    if not request_ids:
        return {}
    if settings.REDIS_URL:
        values = _redis().mget([_keys(r)[1] for r in request_ids])
        return {r: int(v) for r, v in zip(request_ids, values, strict=True) if v}
    from generation.models import LatestPreview

    return {str(r): n for r, n in LatestPreview.objects.filter(request_id__in=request_ids).values_list(
        "request_id", "number")}


def discard(request_id):
    """Forget the request's preview (it ended, or a new attempt starts)."""
    if settings.REDIS_URL:
        try:
            _redis().delete(*_keys(request_id))
        except Exception:  # it expires by itself
            pass
        return
    from generation.models import LatestPreview

    LatestPreview.objects.filter(request_id=request_id).delete()


def purge_stale(now=None):
    """Delete previews older than their time to live (a worker killed mid-job left them); return how many."""
    if settings.REDIS_URL:
        return 0  # Redis expires them
    from generation.models import LatestPreview

    cutoff = (now or timezone.now()) - timedelta(seconds=_ttl())
    return LatestPreview.objects.filter(updated_at__lt=cutoff).delete()[0]
