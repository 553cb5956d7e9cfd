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

from generation import backends, enqueue, lifecycle
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
from generation.models import GenerationRequest
from generation.pngmeta import NotAPng
from generation.states import TERMINAL, Status
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
        self.step = self.total_steps = 0
        self.woke = False  # whether this job already sent the wake-up for the slot it frees

    # --- the paragraph ---------------------------------------------------------------------

    def run(self, *, resume=False):
        job = self.job
        try:
            self.request = GenerationRequest.objects.get(pk=job.request_id)
            graph = self.request.graph if resume and self.request.graph else self.build_graph()
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
                    self.client.submit(graph, prompt_id=job.prompt_id, client_id=job.prompt_id)
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
        except BackendLacks as exc:
            self.requeue_or_fail(f"{job.backend} lacks {exc}; trying another backend")
        except (BackendUnavailable, OutputMissing) as exc:
            if isinstance(exc, BackendUnavailable) and backends.mark_down(job.backend, exc):
                enqueue.watch_backend(job.backend)
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

    def build_graph(self):
        """The request's graph for this backend: check the backend can run it, upload the input
        images, build, store the graph on the row (exactly what ran), validate like ComfyUI."""
        request = self.request
        workflow = request.workflow
        info = self.check_capabilities()
        files = self.upload_inputs()
        graph = workflow.build(request.params, files=files,
                               filename_prefix=filename_prefix_for(request.pk, self.job.attempt))
        self.write(force=True, graph=graph)
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
        """Write progress and heartbeats until the prompt ends; return the terminal event."""
        weights = self.request.workflow.progress_weights(graph)
        done = {}  # node id -> fraction of it done (1.0 finished)
        running_node = None
        interval = settings.GENERATION["HEARTBEAT_SECONDS"]
        for event in events.follow(self.job.prompt_id, idle_interval=interval):
            if timezone.now() >= self.request.deadline_at:
                raise DeadlineExceeded
            if isinstance(event, ev.TERMINAL):
                return event
            fields = {}
            if isinstance(event, ev.ExecutionCached):
                done.update({node: 1.0 for node in event.nodes})
            elif isinstance(event, ev.Executing) and event.node:
                if running_node and running_node != event.node:
                    done[running_node] = 1.0
                running_node = event.node
                node = graph.get(event.node, {})
                fields["current_node"] = f"{node.get('class_type', '?')} ({event.node})"[:64]
            elif isinstance(event, ev.Progress):
                self.step, self.total_steps = int(event.value), int(event.max)
                fields.update(current_step=self.step, total_steps=self.total_steps)
                node = event.node or running_node
                if node and self.total_steps:
                    done[node] = max(done.get(node, 0.0), min(1.0, self.step / self.total_steps))
            elif isinstance(event, ev.Executed) and event.node:
                done[event.node] = 1.0
            fraction = self.fraction(done, weights)
            if fraction > self.progress:
                fields["progress"] = fraction
            self.write(**fields)
        raise PromptUnknown(self.job.prompt_id, backend=self.job.backend)  # the stream ended without an outcome

    @staticmethod
    def fraction(done, weights):
        """Share of the run done: each node's done fraction times the workflow's weight for it."""
        total = sum(weights.get(node, 0.0) * share for node, share in done.items())
        return round(min(0.99, total), 4)

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

    def finish(self, outcome, graph):
        if isinstance(outcome, ev.ExecutionError):
            raise outcome.to_error(self.job.backend)
        if isinstance(outcome, ev.ExecutionInterruptedEvent):
            raise outcome.to_error(self.job.backend)
        # ComfyUI is done with it: free the slot now, so the next job is submitted while we store
        self.write(force=True, current_node="Saving images", progress=max(self.progress, 0.99),
                   executed_at=timezone.now())
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
        outputs, thumbnails = self.store_outputs(images, graph)
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
            won = lifecycle.transition(
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
            won = lifecycle.transition(self.job.request_id, Status.FAILED, expect={Status.RUNNING},
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
        won = lifecycle.transition(self.job.request_id, Status.QUEUED, expect={Status.RUNNING},
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


@dataclass
class _Ref:
    """Just enough of a request for :func:`stop_on_backend`."""

    backend: str
    comfyui_prompt_id: str
