"""Writes: the one place that drives a request from the outside (API, UI, admin, commands).

Workers drive requests from the inside through :mod:`generation.runner`; both change status
only through :mod:`generation.lifecycle` (which asks :mod:`generation.states`).
"""

import logging
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from generation import backends, enqueue, inputs, lifecycle
from generation.errors import NotCancellable, ParamsInvalid, TooManyActiveRequests
from generation.models import GenerationRequest, RequirementSet
from generation.states import ACTIVE, WAITING, Status
from generation.workflows import DEFAULT_WORKFLOW, get_workflow
from generation.workflows.fields import MODEL_FOLDERS, Context, Errors
from models_registry.models import ModelType

logger = logging.getLogger(__name__)

REQUEST_OPTIONS = ("workflow", "webhook_url")  # body keys that are not the workflow's parameters


@dataclass
class Submission:
    """A validated submit, nothing stored yet."""

    workflow: object
    params: dict
    summary: object
    requirements: object
    prepared_inputs: dict  # parameter path -> inputs.PreparedInput
    webhook_url: str
    checkpoint: object  # the AvailableModel of summary.checkpoint_model, or None


def prepare_submission(*, user, data, version=None):
    """Validate a submit body (``workflow``, ``webhook_url`` and the workflow's parameters).

    Raises ``ParamsInvalid`` with every problem keyed by field path, including a model or node
    class that no configured backend has.
    """
    if not isinstance(data, dict):
        raise ParamsInvalid({"non_field_errors": ["Expected a JSON object."]})
    workflow = get_workflow(data.get("workflow") or DEFAULT_WORKFLOW, version, user=user)
    errors = Errors()
    webhook_url = _validate_webhook(errors, data.get("webhook_url"))
    ctx = Context(user=user)
    params = None
    try:
        params = workflow.validate({k: v for k, v in data.items() if k not in REQUEST_OPTIONS}, ctx)
    except ParamsInvalid as exc:
        for path, messages in exc.fields.items():
            for message in messages:
                errors.add(path, message)
    if errors:
        raise ParamsInvalid(errors.fields)
    requirements = workflow.requirements(params)
    _refuse_what_no_backend_can_run(workflow, params, requirements)
    summary = workflow.summary(params, ctx)
    checkpoint = next((model for model in ctx.models.values()
                       if model.type == ModelType.CHECKPOINT and model.name == summary.checkpoint_model), None)
    return Submission(workflow, params, summary, requirements, dict(ctx.prepared), webhook_url, checkpoint)


def _refuse_what_no_backend_can_run(workflow, params, requirements):
    lacking = backends.unmet_everywhere(requirements)
    if not lacking:
        return
    missing_everywhere = set.intersection(*(set(items) for items in lacking.values()))
    errors = Errors()
    for path, model_type, name in workflow.parameters.model_reference_paths(params):
        if f"{MODEL_FOLDERS[model_type]} {name}" in missing_everywhere:
            errors.add(path, f"No configured backend has {name!r}.")
    nodes = sorted(item.removeprefix("node ") for item in missing_everywhere if item.startswith("node "))
    if nodes:
        errors.add("workflow", f"No configured backend has the node classes {workflow.slug!r} needs: "
                               f"{', '.join(nodes)}.")
    if not errors:  # each backend lacks something, but not the same thing
        detail = "; ".join(f"{url} lacks {', '.join(items)}" for url, items in sorted(lacking.items()))
        errors.add("workflow", f"No configured backend can run this request ({detail}).")
    raise ParamsInvalid(errors.fields)


def _validate_webhook(errors, raw):
    if raw in (None, ""):
        return ""
    from generation.webhooks import WebhookUrlRefused, check_webhook_url

    if not isinstance(raw, str):
        errors.add("webhook_url", "Not a valid string.")
        return ""
    try:
        return check_webhook_url(raw)
    except WebhookUrlRefused as exc:
        errors.add("webhook_url", str(exc))
        return ""


def submit_generation(*, user, data, idempotency=None, version=None):
    """Validate ``data``, store a new request and queue it once the transaction commits.

    Returns ``(request, created)``. With an :class:`~generation.idempotency.Idempotency` whose key
    this user already used for the same call, the original request is returned and nothing new
    is stored; the same key used for a different call raises ``IdempotencyKeyReused``.
    Raises ``ParamsInvalid`` or ``TooManyActiveRequests``.
    """
    if idempotency is not None and (original := idempotency.original(user)) is not None:
        return original, False
    submission = prepare_submission(user=user, data=data, version=version)
    try:
        request = _store(user=user, submission=submission, idempotency=idempotency)
    except IntegrityError:
        # a concurrent call with the same key committed first (it held the user lock): answer its request
        original = idempotency.original(user) if idempotency is not None else None
        if original is None:
            raise
        return original, False
    return request, True


def _store(*, user, submission, idempotency):
    limit = settings.GENERATION["MAX_ACTIVE_PER_USER"]
    written = []  # input files this submit wrote, removed again if it does not commit
    try:
        with transaction.atomic():
            # Lock the user's row so two concurrent submits cannot both pass the limit check.
            get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk").first()
            active = GenerationRequest.objects.filter(user=user, status__in=list(ACTIVE)).count()
            if active >= limit:
                raise TooManyActiveRequests(limit)
            params, records = submission.params, []
            for path, prepared in submission.prepared_inputs.items():
                is_new = prepared.record is None
                record = inputs.store_prepared(prepared, user=user)
                if is_new:
                    written.append(record.path)
                params = _with_value(params, path, str(record.id))
                records.append(record)
            requirements = submission.requirements
            RequirementSet.objects.bulk_create([RequirementSet(  # one INSERT … ON CONFLICT DO NOTHING
                key=requirements.key, nodes=list(requirements.nodes), model_files=requirements.as_json()["models"])],
                ignore_conflicts=True)
            summary, workflow = submission.summary, submission.workflow
            request = GenerationRequest.objects.create(
                user=user, workflow_slug=workflow.slug,
                workflow_version=workflow.version, params=params, requirements_id=requirements.key,
                prompt=summary.prompt, checkpoint_model=summary.checkpoint_model, checkpoint=submission.checkpoint,
                width=summary.width, height=summary.height, batch_size=summary.batch_size,
                webhook_url=submission.webhook_url)
            if records:
                request.inputs.set(records)
            if idempotency is not None:
                idempotency.remember(user=user, request=request)
            transaction.on_commit(lambda: queue_generation(request.pk, request=request))
    except BaseException:
        for name in written:
            if not _input_file_referenced(name):
                default_storage.delete(name)
        raise
    return request


def _with_value(params, path, value):
    """``params`` with the dotted ``path`` set to ``value`` (copied along the path)."""
    head, _, rest = path.partition(".")
    copy = dict(params)
    copy[head] = _with_value(copy.get(head) or {}, rest, value) if rest else value
    return copy


def _input_file_referenced(name):
    from generation.models import InputImage

    return InputImage.objects.filter(path=name).exists()


# what may change between a submit's insert and its answer
STATE_FIELDS = ["status", "queued_at", "started_at", "finished_at", "updated_at", "backend", "attempts",
                "progress", "current_node", "current_step", "total_steps", "error", "error_detail", "regenerated_from"]


def queue_generation(request_id, *, request=None):
    """pending → queued, then wake a worker. Safe to call twice; a lost wake-up is re-sent by
    the reconciler, which finds queued requests with no live task.

    ``request``, the caller's instance of that row, is kept in step with it: given the values the
    transition wrote, or re-read when someone else moved the row first (so a submit answers
    without reading its row back)."""
    now = timezone.now()
    won = lifecycle.transition(request_id, Status.QUEUED, expect={Status.PENDING}, now=now)
    if request is not None:
        if won:
            request.status, request.queued_at, request.updated_at = Status.QUEUED, now, now
        else:
            request.refresh_from_db(fields=STATE_FIELDS)
    try:
        enqueue.wake_dispatcher()
    except Exception:  # the broker being down must not fail the submit: the row is the truth
        logger.exception("could not enqueue a dispatch wake-up for %s; the reconciler will", request_id)


def regenerate_generation(*, request, user, same_seed=False, idempotency=None):
    """Submit ``request``'s workflow (the version it ran) with its parameters again (a new random
    seed unless ``same_seed``). Returns ``(request, created)`` like :func:`submit_generation`."""
    workflow = request.workflow
    data = {"workflow": request.workflow_slug, **workflow.regenerate_data(request.params, same_seed=same_seed)}
    if request.webhook_url:
        data["webhook_url"] = request.webhook_url
    new, created = submit_generation(user=user, data=data, idempotency=idempotency, version=request.workflow_version)
    if created:
        GenerationRequest.objects.filter(pk=new.pk).update(regenerated_from=request)
        new.regenerated_from = request
    return new, created


def cancel_generation(*, request):
    """Cancel an active request; return the refreshed request.

    Waiting requests are cancelled in the database at once. A running one is removed from its
    backend's queue, then interrupted by prompt id, then marked cancelled — in that order, so
    ComfyUI never starts work we already gave up. A backend that does not answer does not
    stop the cancel: the worker following the job sees the cancelled row and stops too.
    Raises ``NotCancellable`` when the request had already finished.
    """
    if request.status in WAITING and lifecycle.transition(request.pk, Status.CANCELLED, expect=WAITING):
        request.refresh_from_db()
        return request
    request.refresh_from_db()
    if request.status == Status.RUNNING:
        from generation.runner import stop_on_backend

        stop_on_backend(request)
    if request.status in ACTIVE:
        # Any active state: once the prompt is gone from ComfyUI, its worker may requeue the
        # request (running → queued) before this write lands; the person still asked to cancel.
        lifecycle.transition(request.pk, Status.CANCELLED, expect=ACTIVE)
    request.refresh_from_db()
    if request.status != Status.CANCELLED:
        raise NotCancellable(f"The request is already {request.status}.")
    return request


def delete_generation(*, request):
    """Cancel the request if it is active, otherwise delete it with its files."""
    if request.status in ACTIVE:
        return cancel_generation(request=request)
    from generation.storage import delete_request_files

    delete_request_files(request)
    request.delete()
    return None
