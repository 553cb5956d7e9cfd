"""Running one claimed job to its end: submit or re-attach, follow, store, complete.

A job is one attempt of one request on one backend (``attempts`` = n, prompt id derived from
the request and n). The worker holding it owns a *lease*: the ``RunState.heartbeat_at`` value it
last wrote. Every write (progress, heartbeat, the graph, the final transition) is conditional on
the request still ``running`` attempt n and the lease still being ours; zero rows updated means
the job is no longer ours — cancelled (we make sure ComfyUI stops) or taken over by the
reconciler after a stale heartbeat (we stop quietly: the new owner follows the same prompt).
Heartbeats and progress go to the narrow ``RunState`` row only (:meth:`JobRunner.write`, the one
write path of liveness and progress); the request row is written once per step of the job.

A prompt that ComfyUI still runs but that shows no progress and no node change for
``GENERATION["STALL_SECONDS"]`` is interrupted and retried (or failed as stalled once attempts
are used up). Storing outputs is retried with backoff while they are still on the backend;
requeues for faults that may recur get a capped backoff (``not_before``).

ComfyUI does not de-duplicate prompt ids, so before any re-submission we ask ``/history`` and
``/queue`` (``client.locate``) and re-attach if the prompt is already there. A fresh claim's
prompt id is new (derived from an attempt number the claim just took), so its first
submission needs no look-up; every later path (``resume``) looks first.
"""

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from generation import backends, enqueue, lifecycle, metrics
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
from generation.dispatcher import filename_prefix_for
from generation.inputs import read_input
from generation.live import bus
from generation.live import previews as live_previews
from generation.models import GenerationRequest, RunState
from generation.pngmeta import NotAPng
from generation.states import TERMINAL, Lease, Status
from generation.storage import (
    OUTPUT_KINDS,
    StorageWriteFailed,
    delete_files,
    image_path,
    save_exact,
    spooled_output,
    thumbnail_path,
)
from generation.thumbnails import make_thumbnails
from generation.workflows import InputFile, check_graph

logger = logging.getLogger(__name__)

CANCEL_GRACE_SECONDS = 3.0  # an interrupt we did not send may be a cancel about to be written
OUTPUT_LISTS = ("images", "gifs", "videos")  # where save nodes list their files in a history entry
HISTORY_WAIT_SECONDS = 10.0  # after execution_success, how long ComfyUI may take to write the history entry
INPUT_SUBFOLDER = "genonaut"  # where input images go in a backend's input/ folder (named by content hash)


class NotOurs(Exception):
    """The row moved on without us (cancelled, taken over, requeued): stop following."""


class DeadlineExceeded(Exception):
    pass


class Stalled(Exception):
    """ComfyUI still runs the prompt, but it made no progress and changed no node for ``STALL_SECONDS``."""


class BackendLacks(Exception):
    """The chosen backend turned out not to have a node class or model file the request needs."""

    def __init__(self, missing):
        super().__init__(", ".join(missing))
        self.missing = missing


@dataclass
class Job:
    request_id: object
    attempt: int
    backend: str
    prompt_id: str
    lease: datetime  # the heartbeat_at value this worker last wrote


@dataclass(frozen=True)
class Ending:
    """How a job ended, for the task that ran it: whether it already woke the dispatcher for the
    slot it freed, and when a request it requeued with a backoff may start (``None``: no backoff)."""

    woke: bool
    retry_at: datetime | None = None


def run_job(job, *, resume=False):
    """Drive ``job`` until its request is terminal, requeued, or no longer ours.

    Every outcome is written with a conditional update; nothing here raises for a ComfyUI or
    storage problem (they become the request's failure or a requeue). Returns an :class:`Ending`.
    """
    job_runner = JobRunner(job)
    job_runner.run(resume=resume)
    return Ending(job_runner.woke, job_runner.retry_at)


def requeue_backoff(attempt):
    """Seconds a request requeued after ``attempt`` waits before it may start again (capped doubling)."""
    base = settings.GENERATION["REQUEUE_BACKOFF_SECONDS"]
    return min(settings.GENERATION["REQUEUE_BACKOFF_MAX_SECONDS"], base * 2 ** max(0, attempt - 1))


def take_over(request_id, attempt, heartbeat_at):
    """Take the lease of a running job whose worker went silent (its last heartbeat was ``heartbeat_at``,
    ``None`` if it never wrote one); return the new lease, or ``None`` if someone else moved first."""
    lease = timezone.now()
    running = GenerationRequest.objects.filter(pk=request_id, status=Status.RUNNING, attempts=attempt)
    taken = RunState.objects.filter(request_id=request_id, attempt=attempt, heartbeat_at=heartbeat_at).filter(
        Exists(running.filter(pk=OuterRef("request_id")))).update(heartbeat_at=lease)
    if not taken and heartbeat_at is None and running.exists():
        # a row from before RunState held the lease: start one (a racing taker makes this a no-op)
        _, taken = RunState.objects.get_or_create(request_id=request_id,
                                                  defaults={"attempt": attempt, "heartbeat_at": lease})
    return lease if taken else None


def stop_on_backend(request):
    """Make sure ComfyUI drops ``request``'s prompt: remove it from the queue if still pending,
    then interrupt it if it runs (ComfyUI ignores an interrupt for a prompt that is not running).
    Backend errors are logged, not raised: a cancel must not depend on the backend answering.
    Returns whether the backend answered both calls (``True`` when there was nothing to stop)."""
    if not request.backend or not request.comfyui_prompt_id:
        return True
    client = backends.client_for(request.backend)
    client.retries = 0
    answered = True
    for action in (lambda: client.delete_from_queue([request.comfyui_prompt_id]),
                   lambda: client.interrupt(request.comfyui_prompt_id)):
        try:
            action()
        except ComfyUIError as exc:
            answered = False
            logger.warning("could not stop %s on %s: %s", request.comfyui_prompt_id, request.backend, exc)
    return answered


def stop_cancelled_prompt(request_id):
    """Stop the prompt of a cancelled request on its backend and record how that went
    (``backend_stop``: pending → done | unreachable). Idempotent: a request whose stop is not
    pending is left alone. Returns the new ``backend_stop``, or ``None`` when nothing was pending."""
    pending = GenerationRequest.BackendStop.PENDING
    row = GenerationRequest.objects.filter(pk=request_id, status=Status.CANCELLED, backend_stop=pending).only(
        "backend", "comfyui_prompt_id").first()
    if row is None:
        return None
    outcome = (GenerationRequest.BackendStop.DONE if stop_on_backend(row)
               else GenerationRequest.BackendStop.UNREACHABLE)
    GenerationRequest.objects.filter(pk=request_id, backend_stop=pending).update(backend_stop=outcome,
                                                                                  updated_at=timezone.now())
    return outcome


class JobRunner:
    def __init__(self, job):
        self.job = job
        self.client = backends.client_for(job.backend)
        self.request = None
        self.progress = 0.0
        self.written = []  # storage paths written by this attempt (cleaned up if we do not complete)
        self.last_write = 0.0
        self.pending_fields = {}
        self.step = self.total_steps = 0
        self.current_node = ""
        self.graph = None  # the graph built for this attempt (stored on the row once submitted)
        self.woke = False  # whether this job already sent the wake-up for the slot it frees
        self.retry_at = None  # when a request this job requeued with a backoff may start again
        self.preview_method = settings.LIVE["PREVIEW_METHOD"]
        self.last_preview = float("-inf")  # monotonic time the last preview was kept

    # --- the paragraph ---------------------------------------------------------------------

    def run(self, *, resume=False):
        job = self.job
        try:
            self.request = GenerationRequest.objects.get(pk=job.request_id)
            stored = resume and self.request.graph
            graph = self.request.graph if stored else self.build_graph()
            with self.client.event_stream(job.prompt_id, previews=self.preview_method != "none") as events:
                if resume:
                    # someone may have submitted it already: re-attach, never send it twice
                    location = self.client.locate(job.prompt_id)
                    if location.state == "unknown":
                        raise PromptUnknown(job.prompt_id, backend=job.backend)
                else:
                    # a fresh claim minted this prompt id a moment ago, so no one can have sent it;
                    # submit() itself asks /queue + /history before retrying after a transport error
                    location = Location("unsent")
                    self.write(force=True)  # still ours (not cancelled, not taken over): only then submit
                    self.client.submit(graph, prompt_id=job.prompt_id, client_id=job.prompt_id,
                                       extra_data=self.extra_data())
                if not stored:
                    # the exact graph that runs, written while ComfyUI starts on it (a narrow heartbeat,
                    # not this write to the wide row, is what stands between the claim and the submit)
                    self.record(graph=graph)
                if location.state == "finished":
                    outcome = ev.outcome_from_history(job.prompt_id, location.history)
                else:
                    outcome = self.follow(events, graph)
            self.finish(outcome, graph)
        except NotOurs:
            self.not_ours()
        except DeadlineExceeded:
            limit = settings.GENERATION["JOB_DEADLINE_SECONDS"]
            stop_on_backend(self.request)
            self.fail(f"Timed out after {limit} s", {"reason": "deadline", "deadline_seconds": limit})
        except Stalled as exc:
            stop_on_backend(self.request)
            self.requeue_or_fail(f"Stalled: {exc}", cause="stalled", backoff=True)
        except WorkflowRejected as exc:
            self.fail(exc.message, {"type": "validation", "error": exc.error, "node_errors": exc.node_errors},
                      graph=self.graph)
        except ExecutionFailed as exc:
            self.fail(exc.message, {"type": "execution", "node_id": exc.node_id, "node_type": exc.node_type,
                                    "exception_type": exc.exception_type,
                                    "exception_message": exc.exception_message, "traceback": exc.traceback[-20:]})
        except ExecutionInterrupted as exc:
            self.interrupted(exc)
        except PromptUnknown as exc:
            self.requeue_or_fail(f"The backend lost the prompt (restarted?): {exc}", cause="lost", backoff=True)
        except BackendLacks as exc:
            self.requeue_or_fail(f"{job.backend} lacks {exc}; trying another backend", cause="lacks")
        except OutputMissing as exc:
            self.requeue_or_fail(f"Backend unavailable: {exc}", cause="output_missing", backoff=True)
        except BackendUnavailable as exc:
            # out of rotation with its own backoff; another backend may take the request at once
            if backends.mark_down(job.backend, exc):
                enqueue.watch_backend(job.backend)
            self.requeue_or_fail(f"Backend unavailable: {exc}", cause="unavailable")
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
            self.requeue_or_fail(f"Internal error: {type(exc).__name__}: {exc}", cause="internal", backoff=True)
        finally:
            self.client.session.close()

    # --- steps -------------------------------------------------------------------------------

    def build_graph(self):
        """The request's graph for this backend: check the backend can run it, upload the input
        images, build (kept in ``self.graph``), validate like ComfyUI."""
        request = self.request
        workflow = request.workflow
        info = self.check_capabilities()
        files = self.upload_inputs()
        graph = self.graph = workflow.build(request.params, files=files,
                                            filename_prefix=filename_prefix_for(request.pk, self.job.attempt))
        check_graph(graph, info, backend=self.job.backend)
        return graph

    def check_capabilities(self):
        """The backend's ``object_info``, once it shows every node class and model file the request
        needs (re-read once if the cached copy does not: models may have been added since)."""
        requirements = self.request.requirements.as_requirements() if self.request.requirements_id else None
        info = self.client.object_info()
        backends.note_object_info(self.job.backend, info)
        if requirements is None:
            return info
        nodes, lists = backends.capabilities_of(info)
        if requirements.missing_on(set(nodes), lists):
            info = backends.refresh_capabilities(self.job.backend, self.client)
            nodes, lists = backends.capabilities_of(info)
            missing = requirements.missing_on(set(nodes), lists)
            # another backend may have what this one lacks; if none does, ComfyUI's own validation
            # of the graph (next) fails the request with a message naming the node and input
            if missing and not backends.unmet_everywhere(requirements):
                raise BackendLacks(missing)
        return info

    def upload_inputs(self):
        """Upload each input image to the backend (named by content hash, so re-uploading is
        harmless); return ``{parameter path: name the graph uses}``. A failed upload is a backend
        fault (``BackendUnavailable``: requeued with backoff), never the request's."""
        names = {}
        wanted = self.request.workflow.input_files(self.request.params)
        if not wanted:
            return names
        records = {str(record.pk): record for record in self.request.inputs.all()}
        for path, input_id in wanted.items():
            record = records.get(str(input_id))
            if record is None:
                raise ExecutionFailed(node_id="", node_type="LoadImage", exception_type="InputMissing",
                                      exception_message=f"the input image of {path} was deleted",
                                      backend=self.job.backend)
            try:
                data = read_input(record)
            except OSError as exc:
                raise StorageWriteFailed(f"Could not read the input image of {path}: {exc}") from exc
            filename = record.path.rsplit("/", 1)[-1]
            answer = self.client.upload_image(data, name=filename, subfolder=INPUT_SUBFOLDER, overwrite=True)
            subfolder = answer.get("subfolder") or ""
            name = f"{subfolder}/{answer['name']}" if subfolder else answer["name"]
            names[path] = InputFile(name, record.width, record.height)
        return names

    def follow(self, events, graph):
        """Write progress and heartbeats until the prompt ends; return the terminal event.

        Raises :class:`Stalled` when, with the socket up, nothing moved for ``STALL_SECONDS`` and
        ComfyUI says the prompt is running (waiting in its own queue is not a stall; without a
        socket we cannot see progress, so that time does not count)."""
        weights = self.request.workflow.progress_weights(graph)
        loads = metrics.CheckpointLoadTimer(self.job.backend, graph)
        done = {}  # node id -> fraction of it done (1.0 finished)
        running_node = None
        interval = settings.GENERATION["HEARTBEAT_SECONDS"]
        stall_seconds = settings.GENERATION["STALL_SECONDS"]
        last_activity = time.monotonic()
        for event in events.follow(self.job.prompt_id, idle_interval=interval):
            loads.see(event)
            if timezone.now() >= self.request.deadline_at:
                raise DeadlineExceeded
            if isinstance(event, ev.TERMINAL):
                return event
            if isinstance(event, _ACTIVITY) or (isinstance(event, ev.Idle) and not event.connected):
                last_activity = time.monotonic()
            elif stall_seconds and time.monotonic() - last_activity >= stall_seconds:
                if self.client.locate(self.job.prompt_id).state == "running":
                    raise Stalled(f"no progress for {stall_seconds:g} s at {self.current_node or 'the start'}")
                last_activity = time.monotonic()
            fields = {}
            if isinstance(event, ev.ExecutionCached):
                done.update({node: 1.0 for node in event.nodes})
            elif isinstance(event, ev.Executing) and event.node:
                if running_node and running_node != event.node:
                    done[running_node] = 1.0
                running_node = event.node
                node = graph.get(event.node, {})
                fields["current_node"] = self.current_node = f"{node.get('class_type', '?')} ({event.node})"[:64]
            elif isinstance(event, ev.Progress):
                self.step, self.total_steps = int(event.value), int(event.max)
                fields.update(current_step=self.step, total_steps=self.total_steps)
                node = event.node or running_node
                if node and self.total_steps:
                    done[node] = max(done.get(node, 0.0), min(1.0, self.step / self.total_steps))
            elif isinstance(event, ev.Executed) and event.node:
                done[event.node] = 1.0
            elif isinstance(event, ev.Preview):
                self.keep_preview(event)
            fraction = self.fraction(done, weights)
            if fraction > self.progress:
                fields["progress"] = fraction
            self.write(**fields)
        raise PromptUnknown(self.job.prompt_id, backend=self.job.backend)  # the stream ended without an outcome

    def extra_data(self):
        """``extra_data`` of the prompt: ask ComfyUI for latent previews (``LIVE["PREVIEW_METHOD"]``)."""
        return None if self.preview_method == "none" else {"preview_method": self.preview_method}

    def keep_preview(self, event):
        """Keep a latent preview of our prompt as the request's latest (at most one per
        ``PREVIEW_INTERVAL``) and announce it. A preview is a nicety: failing to keep it costs nothing else."""
        now = time.monotonic()
        if event.prompt_id != self.job.prompt_id or not event.data or \
                now - self.last_preview < settings.LIVE["PREVIEW_INTERVAL"]:
            return
        self.last_preview = now
        try:
            number = live_previews.store(self.job.request_id, self.request.user_id, event.image_type, event.data)
        except Exception as exc:
            logger.warning("request %s: could not keep a preview (%s)", self.job.request_id, exc)
            return
        bus.publish({"k": "preview", "u": self.request.user_id, "r": str(self.job.request_id), "n": number})

    @staticmethod
    def fraction(done, weights):
        """Share of the run done: each node's done fraction times the workflow's weight for it."""
        total = sum(weights.get(node, 0.0) * share for node, share in done.items())
        return round(min(0.99, total), 4)

    def write(self, force=False, **fields):
        """Heartbeat plus progress ``fields`` (``progress``, ``current_node``, ``current_step``,
        ``total_steps``), at most every ``HEARTBEAT_SECONDS`` unless ``force``: the one write path of
        a running job's liveness and progress. It goes to the narrow ``RunState`` row only, and only
        while the request still runs this attempt under our lease.

        Raises :class:`NotOurs` when the conditional update matches nothing.
        """
        self.pending_fields.update(fields)
        now_monotonic = time.monotonic()
        if not force and now_monotonic - self.last_write < settings.GENERATION["HEARTBEAT_SECONDS"]:
            return
        values = self.pending_fields
        now = timezone.now()
        updated = self.our_run_state().update(heartbeat_at=now, **values)
        if updated != 1:
            raise NotOurs
        self.job.lease = now
        self.last_write = now_monotonic
        self.progress = max(self.progress, values.get("progress", 0.0))
        self.pending_fields = {}
        if values.keys() & PROGRESS_FIELDS and self.request is not None:
            bus.publish({"k": "progress", "u": self.request.user_id, "r": str(self.job.request_id),
                         "f": self.progress, "st": self.step, "t": self.total_steps, "n": self.current_node})

    def record(self, **fields):
        """Write ``fields`` of the request row itself (the graph sent, ``executed_at``): once per
        step of the job, never per heartbeat. Raises :class:`NotOurs` like :meth:`write`.
        ``updated_at`` (indexed) stays as it is: these are the runner's bookkeeping, and an update
        that changes no indexed column can be HOT."""
        updated = GenerationRequest.objects.filter(pk=self.job.request_id, status=Status.RUNNING,
                                                   attempts=self.job.attempt).filter(
            Exists(RunState.objects.filter(request_id=OuterRef("pk"), attempt=self.job.attempt,
                                           heartbeat_at=self.job.lease))).update(**fields)
        if updated != 1:
            raise NotOurs

    def our_run_state(self):
        """Our ``RunState`` row, as long as the request still runs this attempt under our lease."""
        running = GenerationRequest.objects.filter(pk=OuterRef("request_id"), status=Status.RUNNING,
                                                   attempts=self.job.attempt)
        return RunState.objects.filter(request_id=self.job.request_id, attempt=self.job.attempt,
                                       heartbeat_at=self.job.lease).filter(Exists(running))

    @property
    def lease(self):
        return Lease(self.job.attempt, self.job.lease)

    def wait(self, seconds):
        """Sleep ``seconds`` while keeping the lease fresh (and noticing a cancel: :class:`NotOurs`)."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            time.sleep(min(left, 1.0))
            self.write(force=True)

    def finish(self, outcome, graph):
        if isinstance(outcome, ev.ExecutionError):
            raise outcome.to_error(self.job.backend)
        if isinstance(outcome, ev.ExecutionInterruptedEvent):
            raise outcome.to_error(self.job.backend)
        # ComfyUI is done with it: free the slot now, so the next job is submitted while we store
        self.record(executed_at=timezone.now())
        self.write(force=True, current_node="Saving images", progress=max(self.progress, 0.99))
        self.wake_next()
        entry = self.finished_entry()
        output_nodes = self.request.workflow.output_nodes(graph)
        images = [(node_id, image) for node_id in output_nodes
                  for key in OUTPUT_LISTS for image in (entry.get("outputs", {}).get(node_id, {}).get(key) or [])
                  if isinstance(image, dict) and image.get("type", "output") == "output"]
        if not images:
            node_id = output_nodes[0] if output_nodes else ""
            raise ExecutionFailed(node_id=node_id, node_type=graph.get(node_id, {}).get("class_type", ""),
                                  exception_type="NoOutput",
                                  exception_message="ComfyUI finished but reported no saved image",
                                  backend=self.job.backend)
        outputs, thumbnails = self.store_with_retries(images, graph)
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
        if not self.woke:
            self.woke = True
            enqueue.send_wakeups(1)

    def store_with_retries(self, images, graph):
        """:meth:`store_outputs`, tried again with backoff after a storage error (an S3 5xx, a full
        disk that frees up): the outputs are still on the backend, so each try fetches them anew.
        Raises the last ``StorageWriteFailed`` after ``STORAGE_RETRIES`` retries."""
        retries = settings.GENERATION["STORAGE_RETRIES"]
        for retry in range(retries + 1):
            try:
                return self.store_outputs(images, graph)
            except StorageWriteFailed as exc:
                if retry == retries:
                    raise StorageWriteFailed(f"{exc} (tried {retries + 1} times)") from exc
                delay = settings.GENERATION["STORAGE_RETRY_SECONDS"] * 2 ** retry
                logger.warning("request %s: storing failed (%s); retry %s of %s in %.1f s", self.job.request_id,
                               exc, retry + 1, retries, delay)
                self.write(force=True, current_node=f"Saving images (retry {retry + 1} of {retries})")
                self.wait(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def store_outputs(self, images, graph):
        """Stream each image from ``/view`` into storage with a ``parameters`` chunk; make thumbnails."""
        request = self.request
        texts = {"parameters": request.workflow.a1111_parameters(request.params)}
        outputs, thumbnails = [], []
        for index, (node_id, image) in enumerate(images):
            with self.client.view(image["filename"], image.get("subfolder", ""), image.get("type", "output")) as chunks:
                try:
                    with spooled_output(chunks, texts) as (spool, kind):
                        name = image_path(request, index, kind)
                        self.written.append(name)
                        save_exact(name, spool)
                        spool.seek(0)
                        thumbs = make_thumbnails(spool) if OUTPUT_KINDS[kind] else []
                except NotAPng as exc:
                    raise ExecutionFailed(node_id=node_id, node_type=graph.get(node_id, {}).get("class_type", ""),
                                          exception_type="NotAPng",
                                          exception_message=str(exc), backend=self.job.backend)
                except OSError as exc:  # the spool file itself (local temp disk full)
                    raise StorageWriteFailed(f"Could not buffer output {index}: {exc}") from exc
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
            won = lifecycle.transition(self.job.request_id, Status.COMPLETED, expect={Status.RUNNING},
                                       lease=self.lease, outputs=outputs, thumbnails=thumbnails, error="")
            if won:
                RunState.objects.filter(request_id=self.job.request_id).update(progress=1.0, current_node="",
                                                                               heartbeat_at=None)
                backends.record_outcome(self.job.backend, completed=True)
        if won:
            self.written = []
        else:
            self.not_ours()

    # --- endings -------------------------------------------------------------------------------

    def fail(self, message, detail, **fields):
        with transaction.atomic():
            won = lifecycle.transition(self.job.request_id, Status.FAILED, expect={Status.RUNNING},
                                       lease=self.lease, error=message[:4000],
                                       error_detail={**detail, "backend": self.job.backend,
                                                     "attempt": self.job.attempt}, **fields)
            if won:
                RunState.objects.filter(request_id=self.job.request_id).update(heartbeat_at=None)
                backends.record_outcome(self.job.backend, completed=False)
        if won:
            logger.info("request %s failed: %s", self.job.request_id, message)
        self.cleanup_files()
        if not won:
            self.not_ours()

    def requeue_or_fail(self, reason, *, cause, backoff=False):
        """Back to the fair queue for another attempt, or failed when attempts are used up.

        ``cause`` names the kind of fault (``error_detail.cause``); with ``backoff`` (a fault that may
        recur: lost prompt, missing output, internal error, stall) the request may not start again
        before :func:`requeue_backoff` has passed (``self.retry_at``: the task sends a wake-up then).
        """
        if self.job.attempt >= settings.GENERATION["MAX_ATTEMPTS"]:
            self.fail(f"{reason} (gave up after {self.job.attempt} attempts)",
                      {"type": "retries_exhausted", "cause": cause})
            return
        self.cleanup_files()
        not_before = timezone.now() + timedelta(seconds=requeue_backoff(self.job.attempt)) if backoff else None
        with transaction.atomic():
            won = lifecycle.transition(self.job.request_id, Status.QUEUED, expect={Status.RUNNING},
                                       lease=self.lease, backend="", deadline_at=None, executed_at=None,
                                       not_before=not_before,
                                       error_detail={"retry_reason": reason[:2000], "cause": cause,
                                                     "attempt": self.job.attempt})
            if won:
                RunState.objects.filter(request_id=self.job.request_id).update(
                    heartbeat_at=None, progress=0.0, current_node="", current_step=0, total_steps=0)
        if won:
            logger.warning("request %s requeued after attempt %s: %s", self.job.request_id, self.job.attempt, reason)
            self.retry_at = not_before
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
        return self.our_run_state().exists()

    def not_ours(self):
        """The row moved on: if it was cancelled, make sure ComfyUI stops; tidy our files."""
        row = GenerationRequest.objects.filter(pk=self.job.request_id).only(
            "status", "backend", "comfyui_prompt_id", "attempts", "outputs", "thumbnails").first()
        if row is None or row.status == Status.CANCELLED:
            # the cancel's own task may have run before our submit: make sure ours stops too
            recorded = row is not None and stop_cancelled_prompt(row.pk) is not None
            if not (recorded and row.comfyui_prompt_id == self.job.prompt_id):
                stop_on_backend(_Ref(self.job.backend, self.job.prompt_id))
        if row is None or row.status in TERMINAL:
            from generation.storage import request_file_names

            keep = set(request_file_names(row)) if row is not None else set()
            self.written = [name for name in self.written if name not in keep]
            self.cleanup_files()
        # still active under another owner: it writes the same names, so leave them to it

    def cleanup_files(self):
        if self.written:
            delete_files(self.written)
            self.written = []


PROGRESS_FIELDS = frozenset({"progress", "current_node", "current_step", "total_steps"})

# events that show a prompt moving: any of them resets the stall clock
_ACTIVITY = (ev.ExecutionStart, ev.ExecutionCached, ev.Executing, ev.Progress, ev.Executed, ev.Preview)


@dataclass
class _Ref:
    """Just enough of a request for :func:`stop_on_backend`."""

    backend: str
    comfyui_prompt_id: str
