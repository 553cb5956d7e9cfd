"""Django-Q tasks for registry work staff ask for in the admin (thin: the work is in ``jobs``).

This module is the one place registry work is handed to the broker: the housekeeping queue, so a long
refresh or hash never waits behind (or holds up) generation jobs.
"""

from django.conf import settings
from django_q.tasks import async_task

from models_registry import jobs


def enqueue_refresh(job_id):
    async_task(refresh_registry, job_id, cluster=settings.Q_QUEUES["housekeeping"])


def enqueue_hashes(job_ids):
    if job_ids:
        async_task(hash_models, list(job_ids), cluster=settings.Q_QUEUES["housekeeping"])


def refresh_registry(job_id):
    """Run a requested refresh (``jobs.run_refresh_job``)."""
    return jobs.run_refresh_job(job_id)


def hash_models(job_ids):
    """Hash the first model, then hand the rest to a new task: one file at a time, each task well
    inside Django-Q's timeout however many were selected, and one worker busy, not one per model."""
    first, rest = job_ids[0], job_ids[1:]
    try:
        return jobs.run_hash_job(first)
    finally:
        enqueue_hashes(rest)
