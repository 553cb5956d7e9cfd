"""Typed errors for everything that can go wrong talking to a ComfyUI backend.

Callers act on the type: ``BackendUnavailable`` is retried later (maybe elsewhere),
``WorkflowRejected`` is a permanent failure shown to the user, ``ExecutionFailed`` and
``ExecutionInterrupted`` end one run, ``PromptUnknown`` means the backend lost the prompt,
``UploadRejected`` means the backend refused an input file (retrying the same upload will not help).
"""


class ComfyUIError(Exception):
    """Base class; ``backend`` is the base URL of the ComfyUI server involved."""

    def __init__(self, message, *, backend=""):
        super().__init__(message)
        self.message = message
        self.backend = backend

    def __str__(self):
        return self.message


class BackendUnavailable(ComfyUIError):
    """Connection refused, timed out, or 5xx after the allowed retries."""


class WorkflowRejected(ComfyUIError):
    """ComfyUI refused the graph (HTTP 400, or 200 with ``node_errors``).

    ``error`` and ``node_errors`` are ComfyUI's body as sent; ``message`` names the node and input.
    """

    def __init__(self, error, node_errors, *, backend=""):
        self.error = error or {}
        self.node_errors = node_errors or {}
        super().__init__(describe_rejection(self.error, self.node_errors), backend=backend)


class ExecutionFailed(ComfyUIError):
    """A node raised while the prompt ran (ComfyUI's ``execution_error``)."""

    def __init__(self, *, node_id, node_type, exception_type, exception_message, traceback=(), backend=""):
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = (exception_message or "").strip()
        self.traceback = list(traceback or ())
        super().__init__(f"{node_type} (node {node_id}) failed: {exception_type}: {self.exception_message}",
                         backend=backend)


class ExecutionInterrupted(ComfyUIError):
    """The prompt was interrupted (``POST /interrupt``) while it ran."""

    def __init__(self, *, node_id=None, node_type=None, backend=""):
        self.node_id = node_id
        self.node_type = node_type
        where = f" in {node_type} (node {node_id})" if node_id else ""
        super().__init__(f"Execution interrupted{where}", backend=backend)


class PromptUnknown(ComfyUIError):
    """The prompt is in neither ``/queue`` nor ``/history``: lost (e.g. the server restarted), never done."""

    def __init__(self, prompt_id, *, backend=""):
        self.prompt_id = prompt_id
        super().__init__(f"Prompt {prompt_id} is unknown to {backend or 'the backend'} (lost)", backend=backend)


class OutputMissing(ComfyUIError):
    """``/view`` answered 404 (or 400) for an output file."""


class UploadRejected(ComfyUIError):
    """``POST /upload/image`` answered 4xx: a name or subfolder leaving the input folder, no file, too large.

    ``status`` is the HTTP status; ``name``/``subfolder`` are what was sent.
    """

    def __init__(self, *, status, name, subfolder="", backend=""):
        self.status = status
        self.name = name
        self.subfolder = subfolder
        where = f"{subfolder}/{name}" if subfolder else name
        super().__init__(f"ComfyUI refused the upload of {where!r} (HTTP {status})", backend=backend)


def describe_rejection(error, node_errors):
    """One human sentence per problem, naming the node, its class and the input at fault."""
    parts = []
    for node_id, entry in (node_errors or {}).items():
        for problem in entry.get("errors", []):
            extra = problem.get("extra_info") or {}
            where = f"{entry.get('class_type', '?')} (node {node_id})"
            if extra.get("input_name"):
                where += f" input '{extra['input_name']}'"
            text = problem.get("message", "invalid")
            if problem.get("details"):
                text += f": {problem['details']}"
            parts.append(f"{where}: {text}")
    if not parts:
        text = (error or {}).get("message") or "Workflow rejected"
        if (error or {}).get("details"):
            text += f" ({error['details']})"
        parts.append(text)
    return "ComfyUI rejected the workflow: " + "; ".join(parts)
