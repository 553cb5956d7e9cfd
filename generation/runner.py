"""Running one claimed job to its end: submit or re-attach, follow, store, complete.

A job is one attempt of one request on one backend (``attempts`` = n, prompt id derived from
the request and n). The worker holding it owns a *lease*: the ``heartbeat_at`` value it last
wrote. Every write (progress, heartbeat, the final transition) is conditional on
``status = running AND attempts = n AND heartbeat_at = lease``; zero rows updated means the
job is no longer ours — cancelled (we make sure ComfyUI stops) or taken over by the
reconciler after a stale heartbeat (we stop quietly: the new owner follows the same prompt).

ComfyUI does not de-duplicate prompt ids, so before any re-submission we ask ``/history`` and
``/queue`` (``client.locate``) and re-attach if the prompt is already there. A fresh claim's
prompt id is new (derived from an attempt number the claim just took), so its first
submission needs no look-up; every later path (``resume``) looks first.
"""

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from generation import backends, states
from generation.comfyui import events as ev
from generation.comfyui.client import Location
from generation.comfyui.errors import (
    BackendUnavailable,
    ComfyUIError,
    ExecutionFailed,
    ExecutionInterrupted,
    OutputMissing,
    PromptUnknown,
    WorkflowRejected,
)
from generation.comfyui.workflow import SAMPLER_NODE_ID, SAVE_NODE_ID, build_workflow, check_workflow
from generation.dispatcher import filename_prefix_for
from generation.models import GenerationRequest
from generation.pngmeta import NotAPng, a1111_parameters
from generation.states import Status
from generation.storage import (
    StorageWriteFailed,
    delete_files,
    image_path,
    save_exact,
    spooled_png,
    thumbnail_path,
)
from generation.thumbnails import make_thumbnails

logger = logging.getLogger(__name__)

SAMPLER_SHARE = 0.85  # of the progress bar: sampling dominates the time of a txt2img run
CANCEL_GRACE_SECONDS = 3.0  # an interrupt we did not send may be a cancel about to be written
HISTORY_WAIT_SECONDS = 10.0  # after execution_success, how long ComfyUI may take to write the history entry


class NotOurs(Exception):
    """The row moved on without us (cancelled, taken over, requeued): stop following."""


class DeadlineExceeded(Exception):
    pass


@dataclass
class Job:
    request_id: object
    attempt: int
    backend: str
    prompt_id: str
    lease: datetime  # the heartbeat_at value this worker last wrote


def run_job(job, *, resume=False):
    """Drive ``job`` until its request is terminal, requeued, or no longer ours.

    Every outcome is written with a conditional update; nothing here raises for a ComfyUI or
    storage problem (they become the request's failure or a requeue). Returns whether the
    job already woke the dispatcher for the slot it freed.
    """
    job_runner = JobRunner(job)
    job_runner.run(resume=resume)
    return job_runner.woke


def stop_on_backend(request):
    """Make sure ComfyUI drops ``request``'s prompt: remove it from the queue if still pending,
    then interrupt it if it runs (ComfyUI ignores an interrupt for a prompt that is not running).
    Backend errors are logged, not raised: a cancel must not depend on the backend answering."""
    if not request.backend or not request.comfyui_prompt_id:
        return
    client = backends.client_for(request.backend)
    client.retries = 0
    for action in (lambda: client.delete_from_queue([request.comfyui_prompt_id]),
                   lambda: client.interrupt(request.comfyui_prompt_id)):
        try:
            action()
        except ComfyUIError as exc:
            logger.warning("could not stop %s on %s: %s", request.comfyui_prompt_id, request.backend, exc)


class JobRunner:
    def __init__(self, job):
        self.job = job
        self.client = backends.client_for(job.backend)
        self.request = None
        self.progress = 0.0
        self.written = []  # storage paths written by this attempt (cleaned up if we do not complete)
        self.last_write = 0.0
        self.pending_fields = {}
        self.sampler_seen = False
        self.step = self.total_steps = 0
        self.woke = False  # whether this job already sent the wake-up for the slot it frees

    # --- the paragraph ---------------------------------------------------------------------

    def run(self, *, resume=False):
        job = self.job
        try:
            self.request = GenerationRequest.objects.get(pk=job.request_id)
            workflow = self.request.workflow if resume and self.request.workflow else self.build_workflow()
            with self.client.event_stream(job.prompt_id) as events:
                if resume:
                    # someone may have submitted it already: re-attach, never send it twice
                    location = self.client.locate(job.prompt_id)
                    if location.state == "unknown":
                        raise PromptUnknown(job.prompt_id, backend=job.backend)
                else:
                    # a fresh claim minted this prompt id a moment ago, so no one can have sent it;
                    # submit() itself asks /queue + /history before retrying after a transport error
                    location = Location("unsent")
                    self.client.submit(workflow, prompt_id=job.prompt_id, client_id=job.prompt_id)
                if location.state == "finished":
                    outcome = ev.outcome_from_history(job.prompt_id, location.history)
                else:
                    outcome = self.follow(events, workflow)
            self.finish(outcome, workflow)
        except NotOurs:
            self.not_ours()
        except DeadlineExceeded:
            limit = settings.GENERATION["JOB_DEADLINE_SECONDS"]
            stop_on_backend(self.request)
            self.fail(f"Timed out after {limit} s", {"reason": "deadline", "deadline_seconds": limit})
        except WorkflowRejected as exc:
            self.fail(exc.message, {"type": "validation", "error": exc.error, "node_errors": exc.node_errors})
        except ExecutionFailed as exc:
            self.fail(exc.message, {"type": "execution", "node_id": exc.node_id, "node_type": exc.node_type,
                                    "exception_type": exc.exception_type,
                                    "exception_message": exc.exception_message, "traceback": exc.traceback[-20:]})
        except ExecutionInterrupted as exc:
            self.interrupted(exc)
        except PromptUnknown as exc:
            self.requeue_or_fail(f"The backend lost the prompt (restarted?): {exc}")
        except (BackendUnavailable, OutputMissing) as exc:
            if isinstance(exc, BackendUnavailable) and backends.mark_down(job.backend, exc):
                from generation.tasks import start_backend_watch

                start_backend_watch(job.backend)
            self.requeue_or_fail(f"Backend unavailable: {exc}")
        except StorageWriteFailed as exc:
            self.fail(f"Storing the images failed: {exc}", {"type": "storage"})
        except GenerationRequest.DoesNotExist:
            logger.info("request %s was deleted while it ran", job.request_id)
            stop_on_backend(_Ref(job.backend, job.prompt_id))
        except DatabaseError:
            raise  # the row cannot be written now; the reconciler resumes the job once the lease is stale
        except Exception as exc:  # a bug must cost attempts (capped), not loop through resume forever
            logger.exception("request %s attempt %s: unexpected error", job.request_id, job.attempt)
            stop_on_backend(_Ref(job.backend, job.prompt_id))
            self.requeue_or_fail(f"Internal error: {type(exc).__name__}: {exc}")
        finally:
            self.client.session.close()

    # --- steps -------------------------------------------------------------------------------

    def build_workflow(self):
        request = self.request
        workflow = build_workflow(
            prompt=request.prompt, negative_prompt=request.negative_prompt,
            checkpoint_model=request.checkpoint_model, lora_models=request.lora_models, width=request.width,
            height=request.height, batch_size=request.batch_size, sampler_params=request.sampler_params,
            filename_prefix=filename_prefix_for(request.pk, self.job.attempt))
        self.write(force=True, workflow=workflow)  # stored before sending: the row says exactly what ran
        check_workflow(workflow, self.client.object_info(), backend=self.job.backend)
        return workflow

    def follow(self, events, workflow):
        """Write progress and heartbeats until the prompt ends; return the terminal event."""
        total_nodes = len(workflow)
        done = set()
        running_node = None
        interval = settings.GENERATION["HEARTBEAT_SECONDS"]
        for event in events.follow(self.job.prompt_id, idle_interval=interval):
            if timezone.now() >= self.request.deadline_at:
                raise DeadlineExceeded
            if isinstance(event, ev.TERMINAL):
                return event
            fields = {}
            if isinstance(event, ev.ExecutionCached):
                done.update(event.nodes)
            elif isinstance(event, ev.Executing) and event.node:
                if running_node and running_node != event.node:
                    done.add(running_node)
                running_node = event.node
                node = workflow.get(event.node, {})
                fields["current_node"] = f"{node.get('class_type', '?')} ({event.node})"[:64]
            elif isinstance(event, ev.Progress):
                self.step, self.total_steps = int(event.value), int(event.max)
                fields.update(current_step=self.step, total_steps=self.total_steps)
                if event.node == SAMPLER_NODE_ID or event.node is None:
                    self.sampler_seen = True
            elif isinstance(event, ev.Executed) and event.node:
                done.add(event.node)
            fraction = self.fraction(done, total_nodes)
            if fraction > self.progress:
                fields["progress"] = fraction
            self.write(**fields)
        raise PromptUnknown(self.job.prompt_id, backend=self.job.backend)  # the stream ended without an outcome

    def fraction(self, done, total_nodes):
        """Share of the run done: nodes finished, with the sampler's steps weighing most."""
        others = max(1, total_nodes - 1)
        other_done = len([n for n in done if n != SAMPLER_NODE_ID])
        if SAMPLER_NODE_ID in done:
            sampling = 1.0
        else:
            sampling = self.step / self.total_steps if self.total_steps and self.sampler_seen else 0.0
        return round(min(0.99, SAMPLER_SHARE * sampling + (1 - SAMPLER_SHARE) * min(1.0, other_done / others)), 4)

    def write(self, force=False, **fields):
        """Heartbeat plus ``fields``, at most every ``HEARTBEAT_SECONDS`` unless ``force``.

        Raises :class:`NotOurs` when the conditional update matches nothing.
        """
        for key, value in fields.items():
            self.pending_fields[key] = value
        now_monotonic = time.monotonic()
        if not force and now_monotonic - self.last_write < settings.GENERATION["HEARTBEAT_SECONDS"]:
            return
        values = self.pending_fields
        now = timezone.now()
        updated = GenerationRequest.objects.filter(
            pk=self.job.request_id, status=Status.RUNNING, attempts=self.job.attempt, heartbeat_at=self.job.lease,
        ).update(heartbeat_at=now, updated_at=now, **values)
        if updated != 1:
            raise NotOurs
        self.job.lease = now
        self.last_write = now_monotonic
        self.progress = max(self.progress, values.get("progress", 0.0))
        self.pending_fields = {}

    def finish(self, outcome, workflow):
        if isinstance(outcome, ev.ExecutionError):
            raise outcome.to_error(self.job.backend)
        if isinstance(outcome, ev.ExecutionInterruptedEvent):
            raise outcome.to_error(self.job.backend)
        # ComfyUI is done with it: free the slot now, so the next job is submitted while we store
        self.write(force=True, current_node="Saving images", progress=max(self.progress, 0.99),
                   executed_at=timezone.now())
        self.wake_next()
        entry = self.finished_entry()
        images = [image for image in (entry.get("outputs", {}).get(SAVE_NODE_ID, {}).get("images") or [])
                  if image.get("type", "output") == "output"]
        if not images:
            raise ExecutionFailed(node_id=SAVE_NODE_ID, node_type="SaveImage", exception_type="NoOutput",
                                  exception_message="ComfyUI finished but reported no saved image",
                                  backend=self.job.backend)
        outputs, thumbnails = self.store_outputs(images)
        self.complete(outputs, thumbnails)

    def finished_entry(self):
        """The prompt's history entry after a success event.

        ComfyUI sends ``execution_success`` a moment before it writes the history entry (the
        prompt still shows as running until then), so wait for it; a prompt that is in neither
        queue nor history was lost by a restart in between, and is retried, not failed.
        """
        deadline = time.monotonic() + HISTORY_WAIT_SECONDS
        while True:
            location = self.client.locate(self.job.prompt_id)
            if location.state == "finished":
                return location.history
            if location.state == "unknown" or time.monotonic() > deadline:
                raise PromptUnknown(self.job.prompt_id, backend=self.job.backend)
            time.sleep(0.05)

    def wake_next(self):
        from generation.tasks import send_wakeups

        if not self.woke:
            self.woke = True
            send_wakeups(1)

    def store_outputs(self, images):
        """Stream each image from ``/view`` into storage with a ``parameters`` chunk; make thumbnails."""
        request = self.request
        texts = {"parameters": a1111_parameters(request)}
        outputs, thumbnails = [], []
        for index, image in enumerate(images):
            name = image_path(request, index)
            with self.client.view(image["filename"], image.get("subfolder", ""), image.get("type", "output")) as chunks:
                try:
                    with spooled_png(chunks, texts) as spool:
                        self.written.append(name)
                        save_exact(name, spool)
                        spool.seek(0)
                        thumbs = make_thumbnails(spool)
                except NotAPng as exc:
                    raise ExecutionFailed(node_id=SAVE_NODE_ID, node_type="SaveImage", exception_type="NotAPng",
                                          exception_message=str(exc), backend=self.job.backend)
                except OSError as exc:  # the spool file itself (local temp disk full)
                    raise StorageWriteFailed(f"Could not buffer {name}: {exc}") from exc
            sizes = {}
            for thumb in thumbs:
                thumb_name = thumbnail_path(request, index, thumb.size, thumb.extension)
                self.written.append(thumb_name)
                save_exact(thumb_name, thumb.data)
                sizes[thumb.size] = thumb_name
            outputs.append(name)
            thumbnails.append(sizes)
            self.write()  # heartbeat between images: a big batch must not look stale
        return outputs, thumbnails

    def complete(self, outputs, thumbnails):
        with transaction.atomic():
            won = states.transition(
                self.job.request_id, Status.COMPLETED, expect={Status.RUNNING},
                where={"attempts": self.job.attempt, "heartbeat_at": self.job.lease},
                outputs=outputs, thumbnails=thumbnails, progress=1.0, current_node="", error="",
            )
            if won:
                backends.record_outcome(self.job.backend, completed=True)
        if won:
            self.written = []
        else:
            self.not_ours()

    # --- endings -------------------------------------------------------------------------------

    def fail(self, message, detail):
        with transaction.atomic():
            won = states.transition(self.job.request_id, Status.FAILED, expect={Status.RUNNING},
                                    where={"attempts": self.job.attempt, "heartbeat_at": self.job.lease},
                                    error=message[:4000], error_detail={**detail, "backend": self.job.backend,
                                                                        "attempt": self.job.attempt})
            if won:
                backends.record_outcome(self.job.backend, completed=False)
        if won:
            logger.info("request %s failed: %s", self.job.request_id, message)
        self.cleanup_files()
        if not won:
            self.not_ours()

    def requeue_or_fail(self, reason):
        """Back to the fair queue for another attempt, or failed when attempts are used up."""
        if self.job.attempt >= settings.GENERATION["MAX_ATTEMPTS"]:
            self.fail(f"{reason} (gave up after {self.job.attempt} attempts)", {"type": "retries_exhausted"})
            return
        self.cleanup_files()
        won = states.transition(self.job.request_id, Status.QUEUED, expect={Status.RUNNING},
                                where={"attempts": self.job.attempt, "heartbeat_at": self.job.lease},
                                backend="", heartbeat_at=None, deadline_at=None, progress=0.0, current_node="",
                                current_step=0, total_steps=0, executed_at=None,
                                error_detail={"retry_reason": reason[:2000], "attempt": self.job.attempt})
        if won:
            logger.warning("request %s requeued after attempt %s: %s", self.job.request_id, self.job.attempt, reason)
        else:
            self.not_ours()

    def interrupted(self, exc):
        """An interrupt we did not send is usually a cancel whose status write is on its way."""
        deadline = time.monotonic() + CANCEL_GRACE_SECONDS
        while time.monotonic() < deadline:
            if not self.still_ours():
                self.not_ours()
                return
            time.sleep(0.1)
        self.fail(f"Interrupted on the ComfyUI server ({exc.message})", {"type": "interrupted",
                                                                         "node_id": exc.node_id,
                                                                         "node_type": exc.node_type})

    def still_ours(self):
        return GenerationRequest.objects.filter(pk=self.job.request_id, status=Status.RUNNING,
                                                attempts=self.job.attempt, heartbeat_at=self.job.lease).exists()

    def not_ours(self):
        """The row moved on: if it was cancelled, make sure ComfyUI stops; tidy our files."""
        row = GenerationRequest.objects.filter(pk=self.job.request_id).only(
            "status", "backend", "comfyui_prompt_id", "attempts", "outputs", "thumbnails").first()
        if row is None or row.status == Status.CANCELLED:
            stop_on_backend(_Ref(self.job.backend, self.job.prompt_id))
        if row is None or row.status in states.TERMINAL:
            from generation.storage import request_file_names

            keep = set(request_file_names(row)) if row is not None else set()
            self.written = [name for name in self.written if name not in keep]
            self.cleanup_files()
        # still active under another owner: it writes the same names, so leave them to it

    def cleanup_files(self):
        if self.written:
            delete_files(self.written)
            self.written = []


@dataclass
class _Ref:
    """Just enough of a request for :func:`stop_on_backend`."""

    backend: str
    comfyui_prompt_id: str
