"""OpenAPI: the submit body, one schema per workflow, generated from the workflows' own definitions.

drf-spectacular builds the rest of the schema from the views; this post-processing hook adds a
``Generate<Slug>`` component per workflow (its parameters' JSON Schema, with limits and choices
from the ComfyUI catalogue and the model registry, plus ``workflow`` and ``webhook_url``) and
makes the submit body ``oneOf`` them. Without ``workflow`` a body is txt2img, so only that schema
leaves ``workflow`` optional.
"""

from django.db import DatabaseError

from generation.workflows import DEFAULT_WORKFLOW, all_workflows, builtin_workflows
from generation.workflows.fields import Context

GENERATE_PATH = "/api/v1/comfyui/generate/"


def component_name(slug):
    return "Generate" + "".join(part.capitalize() for part in slug.replace("-", "_").split("_"))


def workflow_body_schema(workflow, ctx):
    schema = workflow.schema(ctx)
    properties = {
        "workflow": {"type": "string", "enum": [workflow.slug],
                     "description": f"{workflow.name}: {workflow.description}"},
        **schema["properties"],
        "webhook_url": {"type": "string", "format": "uri", "maxLength": 2000,
                        "description": "Receives a signed POST when the request finishes (public http(s) only)"},
    }
    required = list(schema.get("required", []))
    if workflow.slug != DEFAULT_WORKFLOW:
        required.insert(0, "workflow")
    body = {"type": "object", "title": workflow.name, "properties": properties, "additionalProperties": False}
    if required:
        body["required"] = required
    return body


def add_workflow_bodies(result, generator, request, public):
    """``SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]`` entry."""
    ctx = Context(user=getattr(request, "user", None))
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    refs = {}
    try:
        workflows = all_workflows(getattr(request, "user", None))
    except DatabaseError:  # manage.py check builds the schema without a database: the built-ins only
        workflows = [workflow for workflow in builtin_workflows()]
    for workflow in workflows:
        name = component_name(workflow.slug)
        schemas[name] = workflow_body_schema(workflow, ctx)
        refs[workflow.slug] = f"#/components/schemas/{name}"
    operation = result.get("paths", {}).get(GENERATE_PATH, {}).get("post")
    if operation is not None:
        body = {"oneOf": [{"$ref": ref} for ref in refs.values()]}
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    for stale in ("Generate", "GenerateRequest"):
        schemas.pop(stale, None)
    return result
